"""The plan and its configuration: the mirror list and tuning, what to fetch, what was fetched."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder.errors import DownloadError
from builder.redact import redact_url

OFFICIAL_HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Mirror:
    name: str
    url: str  # may carry credentials (userinfo, a token parameter): show display_url instead

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class FetchConfig:
    """Tuning and the ordered mirror list."""

    mirrors: tuple[Mirror, ...] = (Mirror("hub", OFFICIAL_HUB),)
    concurrency: int = 4  # files at once
    parts: int = 4  # byte ranges in flight at once per large file
    chunk_bytes: int = 32 * 1024 * 1024  # a large file is fetched as ranges of this size, in order
    attempts: int = 6  # failures in a row without progress, per file and mirror
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    progress_seconds: float = 10.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FetchConfig":
        values = dict(data)
        values["mirrors"] = tuple(Mirror(m["name"], m["url"].rstrip("/")) for m in data.get("mirrors", []))
        if not values["mirrors"]:
            raise DownloadError("the fetch configuration lists no mirror")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mirrors"] = [asdict(m) for m in self.mirrors]
        return data


@dataclass(frozen=True)
class PlannedFile:
    repo_id: str
    repo_type: str
    revision: str
    path: str
    dest: str
    sha256: str | None
    size: int | None
    layer: str

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision[:12]}"

    @property
    def key(self) -> str:
        """Cache key while downloading: the sha256 when pinned, else one derived from the location."""
        if self.sha256:
            return self.sha256
        return "u-" + hashlib.sha1(f"{self.repo_type}/{self.repo_id}@{self.revision}/{self.path}".encode()).hexdigest()


@dataclass
class Attempt:
    """One try at one file on one mirror, for the download ledger."""

    model: str
    repo_id: str
    revision: str
    path: str
    mirror: str
    bytes: int
    seconds: float
    outcome: str  # ok | cached | retry | failed
    error: str | None = None


@dataclass(frozen=True)
class FetchedFile:
    dest: str
    sha256: str
    size: int
    seconds: float
    verified: bool
    source: str  # "cache" or the mirror's name
