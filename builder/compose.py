"""The image: the code image the engine built, with the builder's weights layers spliced in.

    code image (engine):  base .. pip packages .. [marker step] | server code, manifest.json
    the image:            base .. pip packages .. [marker step] | weights layers | server code, manifest.json

The weights go right after the step the template marks (render.WEIGHTS_MARKER), below the
server code: a code change or a version bump then changes only the layers above them, so a pod
that runs the previous version pulls only those; and nothing the server code adds can shadow a
weights path (the marked step fails the build if anything below it holds one).

The config is written here, from what the engine says of the code image (its inspect and its
history), not read from the engine's private store: the same on every engine and for every user
(root or not, classic or containerd image store, local or remote). It is deterministic: the same
code image and weights give the same config, so the same image id, on every run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from builder.docker import Docker
from builder.errors import DockerError
from builder.registry.client import sha256
from builder.render import WEIGHTS_MARKER
from builder.weights import WeightsLayer
from builder.weights.tar import stream_archive

# The image config's `config` keys worth carrying (OCI image-spec, plus Docker's Healthcheck,
# OnBuild, Shell); the rest of what inspect shows is container state.
_RUNTIME_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal",
                 "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")
# Steps that may make a layer even when it holds no bytes (the engine's history then says size 0).
_MAY_MAKE_LAYER = ("RUN", "COPY", "ADD", "WORKDIR")
WEIGHTS_COMMENT = "builder.weights.v1"


@dataclass(frozen=True)
class CodeImage:
    """What the engine built, as the composition needs it."""

    image_id: str
    diff_ids: tuple[str, ...]
    split: int  # how many of its layers go below the weights
    created: str
    platform: dict[str, str]
    runtime: dict[str, Any]
    history: tuple[dict[str, Any], ...]  # oldest first, with empty_layer set
    marker: int  # index in history of the marked step


def _instruction(step: dict[str, Any]) -> str:
    text = (step.get("CreatedBy") or "").strip()
    if "#(nop)" in text:  # the legacy builder's metadata step: `/bin/sh -c #(nop)  CMD [...]`
        return text.split("#(nop)", 1)[1].split(None, 1)[0].upper() if text.split("#(nop)", 1)[1].strip() else ""
    if text.startswith("|"):  # `|1 ARG=value /bin/sh -c ...`: BuildKit's RUN with build arguments
        return "RUN"
    word = text.split(" ", 1)[0].upper()
    return "RUN" if word == "/BIN/SH" else word


def _rfc3339(seconds: int | float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def read_code_image(docker: Docker, image_id: str) -> CodeImage:
    attrs = docker.inspect(image_id)
    diff_ids = tuple(attrs.get("RootFS", {}).get("Layers") or ())
    steps = docker.history(image_id)
    marker = next((i for i, step in enumerate(steps) if WEIGHTS_MARKER in (step.get("CreatedBy") or "")), None)
    if marker is None:
        raise DockerError(f"the code image {image_id[:19]} has no `{WEIGHTS_MARKER}` step: it was not built from a "
                          "template of this builder (render it again with `python -m builder render`)")
    # Above the marker the template has only steps that always make a layer (COPY of files) and
    # metadata: the layers above are exactly the steps there with bytes.
    above = sum(1 for step in steps[marker + 1:] if (step.get("Size") or 0) > 0)
    unsure = [step for step in steps[marker + 1:] if not step.get("Size") and _instruction(step) in _MAY_MAKE_LAYER]
    split = len(diff_ids) - above
    if unsure or split < 0:
        raise DockerError(f"the code image {image_id[:19]} has steps above `{WEIGHTS_MARKER}` whose layers cannot be "
                          "told apart (an empty COPY, a WORKDIR): keep only COPY of files and metadata above it")
    history = _history(steps, marker, split)
    platform = {"architecture": attrs.get("Architecture") or "amd64", "os": attrs.get("Os") or "linux"}
    if attrs.get("Variant"):
        platform["variant"] = attrs["Variant"]
    runtime = {key: value for key, value in (attrs.get("Config") or {}).items()
               if key in _RUNTIME_KEYS and value not in (None, "", [], {})}
    return CodeImage(image_id, diff_ids, split, attrs.get("Created") or _rfc3339(0), platform, runtime,
                     tuple(history), marker)


def _history(steps: list[dict[str, Any]], marker: int, below: int) -> list[dict[str, Any]]:
    """The image config's history from the API's: which steps made a layer is read from their
    sizes (a step with bytes made one); where steps of zero bytes made layers too (BuildKit makes
    one for a RUN that changes nothing), the last such steps that can make one are counted as
    those. Only the history's labels depend on that guess, never which layer is which."""
    layered = [(step.get("Size") or 0) > 0 for step in steps]
    missing = below - sum(layered[: marker + 1])
    for i in range(marker, -1, -1):
        if missing <= 0:
            break
        if not layered[i] and _instruction(steps[i]) in _MAY_MAKE_LAYER:
            layered[i], missing = True, missing - 1
    history = []
    for step, made_layer in zip(steps, layered):
        entry: dict[str, Any] = {"created": _rfc3339(step.get("Created") or 0)}
        if step.get("CreatedBy"):
            entry["created_by"] = step["CreatedBy"]
        if step.get("Comment"):
            entry["comment"] = step["Comment"]
        if not made_layer:
            entry["empty_layer"] = True
        history.append(entry)
    return history


def compose_config(code: CodeImage, weights: list[WeightsLayer]) -> bytes:
    """The image config: the code image's, with the weights layers spliced in after the marker."""
    diff_ids = [*code.diff_ids[: code.split], *(w.diff_id for w in weights), *code.diff_ids[code.split:]]
    added = [{"created": code.created, "created_by": f"builder: weights {w.name} ({len(w.files)} file"
              f"{'s' if len(w.files) != 1 else ''})", "comment": WEIGHTS_COMMENT} for w in weights]
    history = [*code.history[: code.marker + 1], *added, *code.history[code.marker + 1:]]
    config = {**code.platform, "created": code.created, "config": code.runtime,
              "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def image_id_of(config: bytes) -> str:
    return sha256(config)


def load_archive(config: bytes, code: CodeImage, weights: list[WeightsLayer],
                 code_layers: dict[str, tuple[Callable[[], Iterator[bytes]], int]]) -> Iterator[bytes]:
    """The image as a docker-archive stream for `docker load`: the config, the weights layers and
    the code layers `code_layers` holds (diff id -> (reader, size)). The classic store needs only
    those above the weights: it does not read a layer whose chain it has (moby's image/tarexport);
    the containerd image store wants every layer in the archive."""
    layer_names = [f"{d.split(':', 1)[1]}/layer.tar" for d in json.loads(config)["rootfs"]["diff_ids"]]
    config_name = f"{image_id_of(config).split(':', 1)[1]}.json"
    members: list[tuple[str, int, Callable[[], Iterator[bytes]]]] = [(config_name, len(config), lambda: iter([config]))]
    for diff_id in code.diff_ids[: code.split]:
        if diff_id in code_layers:
            members.append((f"{diff_id.split(':', 1)[1]}/layer.tar", code_layers[diff_id][1], code_layers[diff_id][0]))
    for layer in weights:
        members.append((f"{layer.diff_id.split(':', 1)[1]}/layer.tar", layer.size, layer.blob.read))
    for diff_id in code.diff_ids[code.split:]:
        members.append((f"{diff_id.split(':', 1)[1]}/layer.tar", code_layers[diff_id][1], code_layers[diff_id][0]))
    index = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": layer_names}]).encode()
    members.append(("manifest.json", len(index), lambda: iter([index])))
    return stream_archive(members)
