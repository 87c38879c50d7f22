"""The builder's own configuration: approved mirrors, fetch tuning, where the ledger lives.

Read from `[tool.builder]` in the project's pyproject.toml, or from the file named by
`--config` / $BUILDER_CONFIG (YAML or TOML, the same keys at the top level). A mirror is any
Hub-compatible endpoint (the official Hub, an internal `olah` mirror); only the listed ones are
ever fetched from, and HF_ENDPOINT must name one of them.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from builder.errors import ConfigError
from builder.fetch import OFFICIAL_HUB, FetchConfig, Mirror
from builder.ledger import is_postgres_url
from builder.ranking import MirrorAttempt, RankedMirror, as_configured, rank_mirrors
from builder.redact import redact_url, remember_url
from builder.registry import profiles


def _url(value: str) -> str:
    if value.startswith("oci://"):  # the registry weights store (builder/registry/weights.py)
        host, _, repository = value.removeprefix("oci://").strip("/").partition("/")
        if not host or not repository or any(ch.isspace() for ch in value):
            raise ValueError(f"expected oci://HOST[:PORT]/REPOSITORY, got {value!r}")
        return value.rstrip("/")
    if not value.startswith(("https://", "http://")) or any(ch.isspace() for ch in value):
        raise ValueError(f"expected an http(s) URL or oci://HOST/REPOSITORY, got {value!r}")
    return value.rstrip("/")


class MirrorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Short name used in logs and stats.")
    url: Annotated[str, AfterValidator(_url)] = Field(
        description="Base URL of a Hub-compatible endpoint, or oci://HOST[:PORT]/REPOSITORY: the registry weights "
                    "store, where builds publish every verified file and take it from first.")


class FetchTuning(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(default=4, ge=1, le=64, description="Files downloaded at once.")
    parts: int = Field(default=4, ge=1, le=32, description="Byte ranges in flight at once per large file.")
    chunk_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024, description="Size of each byte range of a large file.")
    attempts: int = Field(default=6, ge=1, le=50, description="Failures in a row, without progress, before a mirror is given up.")
    backoff_base: float = Field(default=0.5, gt=0, description="First backoff ceiling in seconds (doubles each failure).")
    backoff_max: float = Field(default=30.0, gt=0, description="Largest backoff ceiling in seconds.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(default=60.0, gt=0, description="Seconds without a byte before a retry.")
    progress_seconds: float = Field(default=10.0, gt=0, description="Seconds between progress lines.")


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    production_targets: tuple[Annotated[str, Field(pattern=r"^(pod|endpoint|template):[A-Za-z0-9_-]{1,64}$")], ...] = Field(
        default=(), description="RunPod targets (pod:ID, endpoint:ID, template:ID) that serve production: only a "
                                "version promoted to production, with its licence approval, may be deployed there.")
    keep_templates: int = Field(default=3, ge=0, le=100, description="Templates builder created and no endpoint "
                                "uses any more that are kept (newest first) after a deploy; older ones are deleted.")




class PushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["auto", "builder", "docker"] = Field(
        default="auto", description="Who pushes: builder (weights as uncompressed layers, parallel, resumable; needs "
                                    "read access to a local engine's overlay2 store), docker (the engine's own push), "
                                    "or auto (builder where it can, else docker).")
    parallel: int = Field(default=4, ge=1, le=32, description="Blobs uploaded at once.")
    chunk_mb: int = Field(default=64, ge=1, le=65536, description="Blobs larger than this go up in chunks of this many "
                          "MiB, each one acknowledged (a stopped push resumes from the last); lower it for registries "
                          "behind a proxy or CDN with a request body limit.")
    gzip_level: int = Field(default=3, ge=1, le=9, description="gzip level of the layers that are not weights (3: "
                            "three times the speed of 6 for 5% more bytes, measured on a torch layer).")
    max_layer_gb: float | None = Field(default=None, gt=0, description="The registry's largest layer in GB (default: "
                                       "what the registry documents, e.g. 10 for ghcr.io; else no limit). A weights "
                                       "file larger than this fails validation, before any download.")
    registries: dict[str, str] = Field(
        default_factory=dict, description="How a registry behaves, by HOST[:PORT], for hosts its name does not give "
        "away (a GitHub Enterprise or Harbor of your own): one of " + ", ".join(profiles.names()) + " "
        "(builder/registry/profiles.py). ghcr.io, docker.io, ECR, Artifact Registry and quay.io are recognised.")

    @field_validator("registries")
    @classmethod
    def _known_profiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            profiles.by_name(name)  # ValueError names the profiles there are
        return value

    def profile(self, host: str) -> profiles.Profile:
        return profiles.profile_for(host, self.registries)

    def max_layer_bytes(self, host: str | None) -> int | None:
        if self.max_layer_gb is not None:
            return int(self.max_layer_gb * 1e9)
        return self.profile(host).max_layer_bytes if host else None


class BuilderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mirrors: tuple[MirrorEntry, ...] = Field(
        default=(MirrorEntry(name="hub", url=OFFICIAL_HUB),), min_length=1,
        description="Approved Hub-compatible endpoints, in order of preference.",
    )
    prefer_fastest_mirror: bool = Field(
        default=True, description="Order the mirrors by their record in the download ledger: success ratio, then "
                                  "throughput, recent attempts weighted more (builder/ranking.py); the configured order "
                                  "breaks ties and applies where there is no record.")
    fetch: FetchTuning = Field(default_factory=FetchTuning, description="Download tuning.")
    ledger: str | None = Field(default=None, description="Where the build ledger lives: a SQLite file's path (default: "
                               "$XDG_STATE_HOME/builder/ledger.sqlite3), or postgresql://user:password@host:port/db "
                               "for one history shared by every build host ($BUILDER_LEDGER wins).")
    weights_cache: str | None = Field(default=None, description="Where the host-side, content-addressed weights cache "
                                      "lives (default: $XDG_CACHE_HOME/builder/weights; $BUILDER_WEIGHTS_CACHE wins). "
                                      "Shared by every build on the host; outside Docker, so `docker builder prune` "
                                      "leaves it alone.")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Deploys to RunPod.")
    push: PushConfig = Field(default_factory=PushConfig, description="Pushes to the registry.")

    @property
    def ledger_location(self) -> str | Path:
        """$BUILDER_LEDGER, else the `ledger` key, else the default file: a path, or a PostgreSQL URL."""
        explicit = os.environ.get("BUILDER_LEDGER") or self.ledger
        if explicit:
            if is_postgres_url(explicit):
                return explicit
            scheme = explicit.partition("://")[0]
            if "://" in explicit and scheme.isascii() and scheme.replace("+", "").isalnum():
                # Never echo the rest: a URL may carry a password.
                raise ConfigError(f"the build ledger's location (BUILDER_LEDGER or the configuration's `ledger`) is a "
                                  f"{scheme}:// URL: use a file path or a postgresql:// URL")
            return Path(explicit).expanduser()
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return state / "builder" / "ledger.sqlite3"

    @property
    def weights_cache_dir(self) -> Path:
        explicit = os.environ.get("BUILDER_WEIGHTS_CACHE") or self.weights_cache
        if explicit:
            return Path(explicit).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "builder" / "weights"

    def approved(self, url: str) -> MirrorEntry | None:
        wanted = url.rstrip("/")
        return next((m for m in self.mirrors if m.url == wanted), None)

    def mirror_order(self, endpoint: str | None, history: Sequence[MirrorAttempt] | None = None,
                     now: float | None = None) -> list[RankedMirror]:
        """The approved mirrors in the order a build tries them, each with why: the explicit
        endpoint first (it must be approved), then as the ledger's record ranks them (when
        prefer_fastest_mirror), else as configured."""
        for url in (endpoint, *(m.url for m in self.mirrors)):
            remember_url(url)  # a mirror's credentials: used by the fetch, never shown
        if not self.prefer_fastest_mirror:
            order = as_configured(self.mirrors, "as configured (prefer_fastest_mirror is off)")
        else:
            order = rank_mirrors(self.mirrors, history or (), time.time() if now is None else now)
        if endpoint:
            chosen = self.approved(endpoint)
            if chosen is None:
                approved = ", ".join(redact_url(m.url) for m in self.mirrors)
                raise ConfigError(
                    f"HF_ENDPOINT {redact_url(endpoint)} is not an approved mirror (approved: {approved}): add it to the "
                    f"builder configuration's mirrors or unset HF_ENDPOINT"
                )
            order = [RankedMirror(chosen.name, chosen.url, None, "HF_ENDPOINT (or --hf-endpoint) names it: tried first"),
                     *(m for m in order if m.name != chosen.name)]
        return order

    def fetch_config(self, endpoint: str | None, history: Sequence[MirrorAttempt] | None = None) -> FetchConfig:
        """The fetch configuration: the mirrors in mirror_order's order, with the configured tuning."""
        order = self.mirror_order(endpoint, history)
        return FetchConfig(mirrors=tuple(Mirror(m.name, m.url) for m in order), **self.fetch.model_dump())


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the builder configuration: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
            return data.get("tool", {}).get("builder", data) if path.name == "pyproject.toml" else data
        return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {' '.join(str(exc).split())[:200]}") from None


def load_config(project_root: Path, explicit: str | Path | None = None) -> BuilderConfig:
    """--config, else $BUILDER_CONFIG, else [tool.builder] in pyproject.toml, else defaults."""
    source = explicit or os.environ.get("BUILDER_CONFIG")
    path = Path(source) if source else project_root / "pyproject.toml"
    if not source and not path.exists():
        return BuilderConfig()
    data = _read(path)
    try:
        return BuilderConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
