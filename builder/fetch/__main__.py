"""`python -m builder.fetch PLAN --cache DIR`: the fetch engine in a process of its own.

The same engine `builder build` runs in-process, for what needs a separate process: the tests
(a download killed with SIGKILL and resumed), bench/, and fetching by hand on a host that
prepares a cache for later builds. PLAN is the JSON of a weights plan (builder/weights/layout.py).
Each attempt is a `::builder-attempt::{json}` line on stdout, a failure one `::builder-error::`
line on stderr; every line is redacted (builder.redact).
"""

import sys

from builder.fetch.command import main

sys.exit(main(sys.argv[1:]))
