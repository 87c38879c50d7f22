"""The lines that carry download attempts out of `python -m builder.fetch`, one whole line each.

`::builder-attempt::{json}` for every attempt; errors have their own marker (builder.errors).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict
from typing import Any

from builder.fetch.plan import Attempt

ATTEMPT_PREFIX = "::builder-attempt::"
_OUTPUT = threading.Lock()


def line(text: str) -> None:
    """One whole line per write, under a lock: lines from the download threads never splice."""
    with _OUTPUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def attempt_line(attempt: Attempt) -> str:
    return ATTEMPT_PREFIX + json.dumps(asdict(attempt), sort_keys=True)


def parse_attempt(text: str) -> Attempt | None:
    if not text.startswith(ATTEMPT_PREFIX):
        return None
    try:
        data: dict[str, Any] = json.loads(text[len(ATTEMPT_PREFIX):])
        return Attempt(**data)
    except (ValueError, TypeError):
        return None


