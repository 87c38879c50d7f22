"""The fetch engine: every weight file, from an approved mirror, verified byte for byte.

Runs in the image's `weights` build stage (`python3 -m builder.fetch PLAN EXPORT --cache /cache`)
where only the standard library and huggingface_hub exist (this package, and builder's
__init__.py, errors.py and redact.py, are copied into the build context: render.copy_fetch_package),
and on the host for `builder lock`, the tests and bench/.

What huggingface_hub does here: URLs for a mirror (`hf_hub_url`), auth headers
(`build_hf_headers`), the HEAD that resolves a file (size, ETag, commit, the CDN redirect,
whether auth may follow it) and the Hub's error classes (`get_hf_file_metadata`,
`hf_raise_for_status`). What it lacks, and this package adds, each for a reason, each in its
own module:

- plan.py: the ordered list of approved mirrors and the tuning (a build secret), the planned
  files, the attempts and results.
- cache.py: a content-addressed cache (CACHE/v1/sha256/HEX), shared by every build and model:
  a blob is served only after its bytes hash to its name, and a blob that does not is removed.
- ranges.py: parallel byte ranges per large file over kept-alive connections: one TCP stream
  rarely fills a pod's link to the Hub's CDN; proxies, with their credentials, http or https.
- tls.py: the system's CAs plus SSL_CERT_FILE's (a corporate CA adds, never replaces).
- transfer.py: content verification (huggingface_hub checks a download's size, never its
  bytes): sha256 computed while the bytes arrive, so a 24 GB file is not read a second time;
  resume across processes from each segment's saved progress.
- failures.py: retries with exponential backoff and full jitter on 5xx, 429 (Retry-After
  honoured), timeouts and dropped connections, counted per file and reset by progress; every
  other failure as one line that says what to do.
- engine.py: several files at once, each from the first mirror that serves it correctly; a
  free-space check before the first byte; progress lines with bytes per second (progress.py).
- export.py: one directory per image layer, with fixed modes and mtimes.
- markers.py: the `::builder-attempt::` lines that carry each attempt to the host's ledger.
- command.py: the command line of the build stage and of the cache tool; every line it prints
  is redacted (builder.redact), since it crosses into the host's build log and ledger.
"""

from __future__ import annotations

from builder.fetch.cache import ContentCache, sha256_of
from builder.fetch.engine import FetchEngine
from builder.fetch.export import fetch_plan
from builder.fetch.markers import ATTEMPT_PREFIX, CACHE_PREFIX, parse_attempt, parse_marker
from builder.fetch.plan import OFFICIAL_HUB, Attempt, FetchConfig, FetchedFile, Mirror, PlannedFile, read_token

__all__ = [
    "ATTEMPT_PREFIX",
    "CACHE_PREFIX",
    "OFFICIAL_HUB",
    "Attempt",
    "ContentCache",
    "FetchConfig",
    "FetchEngine",
    "FetchedFile",
    "Mirror",
    "PlannedFile",
    "fetch_plan",
    "parse_attempt",
    "parse_marker",
    "read_token",
    "sha256_of",
]
