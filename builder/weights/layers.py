"""The weights layers of one build, made from the verified files in the host's weights cache.

Each large file's layer is the file framed by a few tar headers (builder/weights/tar.py); its
digest was computed while the file was downloaded and is read from the cache's record, so a
version bump reads no weight byte. A file that reached the cache before its layer was recorded
(an older cache) is hashed once, and recorded. The small layer's digest is recorded the same
way, keyed by what it holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import DownloadError
from builder.fetch import ContentCache, FetchedFile, PlannedFile
from builder.weights.layout import SMALL, WeightsPlan
from builder.weights.tar import FORMAT_VERSION, Entry, TarBlob, file_layer_frame, pieces_of

SMALL_VERSION = f"{FORMAT_VERSION}-small"


def frames(plan: WeightsPlan):
    """For the fetch engine: how each large file of the plan is framed as a layer of its own."""
    def frame(item: PlannedFile) -> tuple[str, bytes, bytes] | None:
        if item.layer == SMALL or item.sha256 is None or item.size is None:
            return None
        head, tail = file_layer_frame(_member(plan.blob_path(item.sha256)), item.size)
        return FORMAT_VERSION, head, tail
    return frame


def _member(path: PurePosixPath) -> str:
    return str(path).lstrip("/")


@dataclass(frozen=True)
class WeightsLayer:
    name: str  # "sha256-<hex>" or "small"
    blob: TarBlob
    files: tuple[str, ...]

    @property
    def diff_id(self) -> str:
        return self.blob.diff_id

    @property
    def size(self) -> int:
        return self.blob.size


def file_layer(cache: ContentCache, plan: WeightsPlan, sha256: str) -> TarBlob:
    blob = cache.blob(sha256)
    size = blob.stat().st_size
    pieces = pieces_of([Entry(_member(plan.blob_path(sha256)), size=size, source=blob)])
    known = cache.layer(sha256, FORMAT_VERSION)
    if known is not None and known[1] == sum(p.size for p in pieces):
        return TarBlob(pieces, known[0])
    layer = TarBlob(pieces)
    cache.record_layer(sha256, FORMAT_VERSION, layer.diff_id, layer.size)
    return layer


def small_entries(cache: ContentCache, plan: WeightsPlan, fetched: dict[str, FetchedFile]) -> list[Entry]:
    """The model directory: each small file from the cache, a symlink per large file."""
    entries = []
    for item in plan.files:
        got = fetched[item.key]
        name = _member(plan.in_model(item.dest))
        if item.layer == SMALL:
            entries.append(Entry(name, size=got.size, source=cache.blob(got.sha256)))
        else:
            entries.append(Entry(name, "link", target=plan.link_target(item.dest, got.sha256)))
    return entries


def small_layer(cache: ContentCache, plan: WeightsPlan, fetched: dict[str, FetchedFile]) -> TarBlob:
    entries = small_entries(cache, plan, fetched)
    pieces = pieces_of(entries)
    # What decides the bytes: names, kinds, targets and contents (by sha256).
    by_name = {item.dest: fetched[item.key].sha256 for item in plan.files}
    spec = json.dumps([[e.name, e.kind, e.size, e.target] for e in entries] + sorted(by_name.items()))
    key = hashlib.sha256(spec.encode()).hexdigest()
    known = cache.layer(key, SMALL_VERSION)
    size = sum(p.size for p in pieces)
    if known is not None and known[1] == size:
        return TarBlob(pieces, known[0])
    layer = TarBlob(pieces)
    cache.record_layer(key, SMALL_VERSION, layer.diff_id, layer.size)
    return layer


def weights_layers(cache: ContentCache, plan: WeightsPlan, fetched: dict[str, FetchedFile],
                   elsewhere: dict[str, tuple[str, int]] | None = None) -> list[WeightsLayer]:
    """The plan's layers, in the plan's order, from the cache. Every file must be in it, but the
    large ones `elsewhere` names (sha256 -> their layer's digest and size, held by the registry)."""
    elsewhere = elsewhere or {}
    missing = [item.dest for item in plan.files if item.key not in fetched
               or not (cache.has(fetched[item.key].sha256) or fetched[item.key].sha256 in elsewhere)]
    if missing:
        raise DownloadError(f"{plan.model}: {', '.join(missing[:3])} left the weights cache during the build: build again")
    layers = []
    for planned in plan.layers:
        if planned.name == SMALL:
            layers.append(WeightsLayer(SMALL, small_layer(cache, plan, fetched), planned.files))
        else:
            sha = planned.name.removeprefix("sha256-")
            blob = TarBlob.elsewhere(*elsewhere[sha]) if sha in elsewhere and not cache.has(sha) else \
                file_layer(cache, plan, sha)
            layers.append(WeightsLayer(planned.name, blob, planned.files))
    return layers


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str


def smoke_mounts(cache: ContentCache, plan: WeightsPlan, fetched: dict[str, FetchedFile], scratch: Path) -> list[Mount]:
    """Read-only bind mounts that put the weights at their paths in the image, with no copy: each
    large file straight from the cache, and the model directory laid out in `scratch` (small
    files hard-linked from the cache where the filesystem allows, else copied; the symlinks)."""
    model = scratch / plan.model
    for entry in small_entries(cache, plan, fetched):
        path = model / Path(entry.name).relative_to(_member(plan.model_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            path.symlink_to(entry.target)
            continue
        assert entry.source is not None
        try:
            path.hardlink_to(entry.source)
        except OSError:
            path.write_bytes(entry.source.read_bytes())
            path.chmod(0o444)
    for directory in [model, *(p for p in model.rglob("*") if p.is_dir() and not p.is_symlink())]:
        directory.chmod(0o755)
    mounts = [Mount(model, str(plan.model_dir))]
    seen = set()
    for item in plan.files:
        sha = fetched[item.key].sha256
        if item.layer != SMALL and sha not in seen:
            seen.add(sha)
            mounts.append(Mount(cache.blob(sha), str(plan.blob_path(sha))))
    return mounts


def plan_lines(manifest, cache: ContentCache) -> list[str]:
    """The weights layer plan, for `builder render`: each layer, its digest where the cache knows
    it, and each file's sha256 and path in the image."""
    from builder.weights.layout import weights_plan

    plan = weights_plan(manifest)
    lines = [f"weights layers, added by the builder after the marked step ({len(plan.layers)}):"]
    for layer in plan.layers:
        if layer.name == SMALL:
            lines.append(f"  {SMALL}: {plan.model_dir}/ ({len(layer.files)} small files and a symlink per large file; "
                         "digest computed when built)")
            continue
        sha = layer.name.removeprefix("sha256-")
        known = cache.layer(sha, FORMAT_VERSION)
        digest = known[0] if known else "(computed when fetched)"
        lines.append(f"  {digest}  {layer.size:>14,} bytes  {plan.blob_path(sha)}")
        for dest in layer.files:
            lines.append(f"      sha256 {sha}  {plan.in_model(dest)} -> {plan.link_target(dest, sha)}")
    return lines
