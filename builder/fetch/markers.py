"""The marker lines that carry attempts and cache rows out of a build step, through the build log.

`::builder-attempt::{json}` for every download attempt (the host writes it to its ledger) and
`::builder-cache::{json}` for the cache tool's rows; errors have their own marker (builder.errors).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import asdict
from typing import Any

from builder.fetch.plan import Attempt

ATTEMPT_PREFIX = "::builder-attempt::"
CACHE_PREFIX = "::builder-cache::"
_BUILDKIT_PREFIX = re.compile(r"^(?:#\d+\s+\d+(?:\.\d+)?\s+)?")
_OUTPUT = threading.Lock()


def line(text: str) -> None:
    """One whole line per write, under a lock: lines from the download threads never splice, so
    every `::builder-attempt::` line reaches the host's ledger intact."""
    with _OUTPUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def attempt_line(attempt: Attempt) -> str:
    return ATTEMPT_PREFIX + json.dumps(asdict(attempt), sort_keys=True)


def cache_line(row: dict[str, Any]) -> str:
    return CACHE_PREFIX + json.dumps(row)


def parse_marker(text: str, prefix: str) -> dict[str, Any] | None:
    """The JSON a `prefix` line carries out of a build step (after BuildKit's "#N 1.234 "), if any."""
    rest = text[_BUILDKIT_PREFIX.match(text).end():]
    if not rest.startswith(prefix):
        return None
    try:
        return json.loads(rest[len(prefix):])
    except ValueError:
        return None


def parse_attempt(text: str) -> Attempt | None:
    data = parse_marker(text, ATTEMPT_PREFIX)
    try:
        return Attempt(**data) if data is not None else None
    except TypeError:
        return None
