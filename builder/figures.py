"""The ledger's figures, computed once for every reader: `builder stats --prometheus`
(builder/metrics.py, for the Grafana dashboard and the alert rules) and `builder report --html`
(builder/report/) show the same numbers.

Definitions the two share:
- a download attempt is ok, retry (a try that failed and was tried again), failed (given up on
  that mirror) or cached (no mirror asked); the success ratio is ok / (ok + retry + failed);
- a build is running until it finishes as failed, built, pushed or interrupted;
- push speed is the image's bytes (its layers as the registry lists them) over the push's
  seconds: how fast a version reaches the registry, layers already there included;
- a deployment is a rollback when it puts a target on an older version than the one it
  replaced (versions compared as dotted numbers; otherwise it counts as a deploy).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from builder.ledger import Ledger

DOWNLOAD_OUTCOMES = ("ok", "retry", "failed", "cached")
MIRROR_OUTCOMES = ("ok", "retry", "failed")
BUILD_OUTCOMES = ("failed", "built", "pushed", "interrupted")
PHASES = ("build", "smoke", "push")
DEPLOY_OUTCOMES = ("healthy", "timeout", "failed")
VERSIONS_KEPT = 10  # per model, newest first: the per-version figures stay a bounded set of series
USUAL_PUSHES = 10  # a model's usual push speed: the median of up to this many pushes before the newest
USUAL_MIN = 3  # ... and at least this many, or it has no usual yet


@dataclass(frozen=True)
class Push:
    model: str
    version: str
    bytes: int
    seconds: float
    at: float

    @property
    def speed(self) -> float:
        return self.bytes / self.seconds


@dataclass(frozen=True)
class Deployment:
    model: str
    version: str | None
    target: str
    outcome: str
    kind: str  # deploy | rollback
    at: float


@dataclass
class Figures:
    ledger: str  # the ledger's identity: one shared ledger pushed by several runners counts once
    models: set[str] = field(default_factory=set)  # every model with a build: its counters start at zero
    downloads: dict[tuple[str, str, str], tuple[int, int, float]] = field(default_factory=dict)  # (model, mirror, outcome) -> attempts, bytes, seconds
    failing: dict[str, tuple[int, float]] = field(default_factory=dict)  # mirror -> failures in a row, the last one's time
    builds: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, outcome) -> finished builds
    running: dict[str, int] = field(default_factory=dict)  # model -> builds not finished
    phases: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (model, phase) -> seconds of each build
    last_build: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, outcome) -> newest finish
    smokes: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, passed|failed) -> count
    last_smoke: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, passed|failed) -> newest
    smoke_seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (model, version, load|inference)
    image_bytes: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, version) -> newest pushed image
    weights_bytes: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, version)
    pushes: list[Push] = field(default_factory=list)  # oldest first
    deployments: list[Deployment] = field(default_factory=list)  # oldest first

    def usual_push_speed(self, model: str) -> float | None:
        """The median speed of the model's pushes before its newest (None: fewer than USUAL_MIN)."""
        speeds = [p.speed for p in self.pushes if p.model == model][:-1][-USUAL_PUSHES:]
        return statistics.median(speeds) if len(speeds) >= USUAL_MIN else None

    def last_push(self, model: str) -> Push | None:
        return next((p for p in reversed(self.pushes) if p.model == model), None)


def _version_key(version: str | None) -> tuple[int, ...] | None:
    return tuple(int(part) for part in version.split(".")) if version and re.fullmatch(r"\d+(\.\d+)*", version) else None


def _newest_versions(keys: dict[tuple[str, ...], object]) -> set[tuple[str, str]]:
    """The VERSIONS_KEPT newest versions of each model among the (model, version, ...) keys, in
    insertion order (the ledger's order: oldest first)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        model, version = key[0], key[1]
        if version in seen[model]:
            seen[model].remove(version)
        seen[model].append(version)
    return {(model, v) for model, versions in seen.items() for v in versions[-VERSIONS_KEPT:]}


def _downloads(figures: Figures, ledger: Ledger) -> None:
    totals = {(model, mirror, outcome): (count, size, spent)
              for model, mirror, outcome, count, size, spent in ledger.download_totals()}
    # A mirror's every outcome, zeros included, for each model it served: a counter that first
    # appears at 3 is no increase to Prometheus, one that goes 0 -> 3 is. (The cache's rows are
    # all `cached`: no zeros for outcomes it cannot have.)
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for model, mirror, outcome in totals:
        seen[model, mirror].add(outcome)
    for (model, mirror), outcomes in sorted(seen.items()):
        if outcomes - {"cached"}:
            outcomes = outcomes | set(MIRROR_OUTCOMES)
        for outcome in (o for o in DOWNLOAD_OUTCOMES if o in outcomes):
            figures.downloads[model, mirror, outcome] = totals.get((model, mirror, outcome), (0, 0, 0.0))
    figures.failing = {mirror: (count, at) for mirror, count, at in ledger.failures_in_a_row()}


def _builds(figures: Figures, builds: list[dict]) -> None:
    sizes: dict[tuple[str, str], int] = {}
    weights: dict[tuple[str, str], int] = {}
    for build in builds:
        model, version, status = build["model"], build["version"], build["status"]
        figures.models.add(model)
        if build["weights_bytes"] is not None:
            weights[model, version] = int(build["weights_bytes"])
        for outcome in BUILD_OUTCOMES:
            figures.builds.setdefault((model, outcome), 0)
        if status == "running":
            figures.running[model] = figures.running.get(model, 0) + 1
            continue
        figures.running.setdefault(model, 0)
        figures.builds[model, status] += 1
        at = build["finished_at"] or build["started_at"]
        figures.last_build[model, status] = max(figures.last_build.get((model, status), 0.0), at)
        for phase in PHASES:
            if phase in build["seconds"]:
                figures.phases.setdefault((model, phase), []).append(float(build["seconds"][phase]))
        if status == "pushed" and build["layers"] and all("size" in layer for layer in build["layers"]):
            sizes[model, version] = sum(int(layer["size"]) for layer in build["layers"])
    keep = _newest_versions({**weights, **sizes})
    figures.image_bytes = {k: v for k, v in sizes.items() if k in keep}
    figures.weights_bytes = {k: v for k, v in weights.items() if k in keep}


def _smokes(figures: Figures, ledger: Ledger) -> None:
    seconds: dict[tuple[str, str, str], float] = {}
    figures.smokes = {(model, outcome): 0 for model in sorted(figures.models) for outcome in ("passed", "failed")}
    for model, version, passed, load, inference, at in ledger.smoke_records():
        outcome = "passed" if passed else "failed"
        figures.smokes[model, outcome] = figures.smokes.get((model, outcome), 0) + 1
        figures.last_smoke[model, outcome] = max(figures.last_smoke.get((model, outcome), 0.0), at)
        for phase, value in (("load", load), ("inference", inference)):
            if value is not None:
                seconds[model, version, phase] = float(value)
    keep = _newest_versions(seconds)
    figures.smoke_seconds = {k: v for k, v in seconds.items() if (k[0], k[1]) in keep}


def _pushes(figures: Figures, ledger: Ledger, builds: list[dict]) -> None:
    by_id = {b["id"]: b for b in builds}
    for build_id, model, version, outcome, at in ledger.push_records():
        build = by_id.get(build_id)
        if outcome != "pushed" or build is None:
            continue  # already in the registry: nothing was sent, there is no speed
        seconds = float(build["seconds"].get("push") or 0)
        layers = build["layers"]
        if seconds <= 0 or not layers or not all("size" in layer for layer in layers):
            continue
        figures.pushes.append(Push(model, version, sum(int(layer["size"]) for layer in layers), seconds, at))


def _deployments(figures: Figures, ledger: Ledger, builds: list[dict]) -> None:
    rows = ledger.deployment_records()
    version_of = {b["digest"]: b["version"] for b in builds if b.get("digest")}
    version_of.update({digest: version for _, version, digest, *_ in rows if version})
    for model, version, digest, target, outcome, previous, at in rows:
        new, old = _version_key(version or version_of.get(digest)), _version_key(version_of.get(previous or ""))
        kind = "rollback" if new is not None and old is not None and new < old else "deploy"
        figures.deployments.append(Deployment(model, version, target, outcome, kind, at))
        figures.models.add(model)


def collect(ledger: Ledger) -> Figures:
    """Every figure, read from the ledger now."""
    figures = Figures(ledger.identity)
    _downloads(figures, ledger)
    builds = ledger.build_records()
    _builds(figures, builds)
    _smokes(figures, ledger)
    _pushes(figures, ledger, builds)
    _deployments(figures, ledger, builds)
    return figures
