"""The fetch engine: every weight file, from an approved mirror, verified byte for byte.

Runs in the builder's own process, on the build host (no engine, no BuildKit stage: the Hub
token never leaves the builder), for `builder build`, `builder lock`, the tests and bench/.

What huggingface_hub does here: URLs for a mirror (`hf_hub_url`), auth headers
(`build_hf_headers`), the HEAD that resolves a file (size, ETag, commit, the CDN redirect,
whether auth may follow it) and the Hub's error classes (`get_hf_file_metadata`,
`hf_raise_for_status`). What it lacks, and this package adds, each for a reason, each in its
own module:

- plan.py: the ordered list of approved mirrors and the tuning, the planned files, the
  attempts and results.
- cache.py: a content-addressed cache (CACHE/v1/sha256/HEX), shared by every build and model
  on the host: a blob is served only after its bytes hash to its name, and a blob that does not
  is removed; beside each blob, the digest of its own image layer.
- ranges.py: parallel byte ranges per large file over kept-alive connections: one TCP stream
  rarely fills a pod's link to the Hub's CDN; proxies, with their credentials, http or https.
- tls.py: the system's CAs plus SSL_CERT_FILE's (a corporate CA adds, never replaces).
- transfer.py: content verification (huggingface_hub checks a download's size, never its
  bytes): sha256 computed while the bytes arrive, so a 24 GB file is not read a second time,
  and the file's layer digest with it; resume across processes from each segment's saved
  progress.
- failures.py: retries with exponential backoff and full jitter on 5xx, 429 (Retry-After
  honoured), timeouts and dropped connections, counted per file and reset by progress; every
  other failure as one line that says what to do.
- engine.py: several files at once, each from the first mirror that serves it correctly; a
  free-space check before the first byte; progress lines with bytes per second (progress.py).
- oci.py: files from the registry weights store (an `oci://` mirror).
- stream.py: a file straight from a mirror into a sink (the registry), verified on the way,
  for hosts whose disk is smaller than the weights (`builder build --assemble-only`).
"""

from __future__ import annotations

from builder.fetch.cache import ContentCache, sha256_of
from builder.fetch.engine import FetchEngine
from builder.fetch.markers import parse_attempt
from builder.fetch.plan import OFFICIAL_HUB, Attempt, FetchConfig, FetchedFile, Mirror, PlannedFile

__all__ = [
    "OFFICIAL_HUB",
    "Attempt",
    "ContentCache",
    "FetchConfig",
    "FetchEngine",
    "FetchedFile",
    "Mirror",
    "PlannedFile",
    "parse_attempt",
    "sha256_of",
]
