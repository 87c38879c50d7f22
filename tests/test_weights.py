"""The weights outside the engine, without an engine: layer tars, the cache's records, the plan,
and the composition of the image config (from the engine's own inspect and history answers)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from builder.compose import CodeImage, compose_config, read_code_image
from builder.errors import DockerError
from builder.fetch import ContentCache, FetchedFile
from builder.manifest import Manifest
from builder.weights import WeightsLayer, smoke_mounts, weights_layers, weights_plan
from builder.weights.tar import Entry, TarBlob, file_layer_frame, pieces_of, stream_archive


def _cache_with(tmp_path: Path, files: dict[str, bytes]) -> tuple[ContentCache, dict[str, str]]:
    cache = ContentCache(tmp_path / "cache")
    shas = {}
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        part = cache.partial(sha)
        part.write_bytes(data)
        cache.insert(part, sha)
        shas[name] = sha
    return cache, shas


# -- tars ----------------------------------------------------------------------------------------
def test_a_layer_tar_is_the_same_bytes_whatever_the_file_was_called_or_when_it_was_made(tmp_path: Path) -> None:
    data = os.urandom(5000)
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(data)
    two.write_bytes(data)
    os.utime(two, (1_000_000, 1_000_000))
    two.chmod(0o600)
    blobs = [TarBlob(pieces_of([Entry("opt/weights/sha256/x", size=5000, source=path)])) for path in (one, two)]
    assert blobs[0].diff_id == blobs[1].diff_id
    members = list(tarfile.open(fileobj=io.BytesIO(b"".join(blobs[0].read()))))
    assert [(m.name, m.mode, m.mtime, m.uid, m.uname) for m in members] == [
        ("opt", 0o755, 0, 0, ""), ("opt/weights", 0o755, 0, 0, ""), ("opt/weights/sha256", 0o755, 0, 0, ""),
        ("opt/weights/sha256/x", 0o644, 0, 0, "")]


def test_any_byte_range_of_a_layer_reads_back_as_the_whole_does(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(os.urandom(70_000))
    blob = TarBlob(pieces_of([Entry("a/b", size=70_000, source=source), Entry("a/c.json", data=b"{}", size=2),
                              Entry("a/link", "link", target="b")]))
    whole = b"".join(blob.read())
    assert len(whole) == blob.size and whole[-1024:] == bytes(1024)
    for start, end in [(0, 1), (511, 513), (1000, 60_000), (blob.size - 3, None), (blob.size, None)]:
        assert b"".join(blob.read(start, end, block=4096)) == whole[start:end], (start, end)


def test_files_of_8_gib_and_more_get_a_pax_size(tmp_path: Path) -> None:
    head, tail = file_layer_frame("opt/weights/sha256/big", 9 * 2**30)
    parsed = tarfile.open(fileobj=io.BytesIO(head + bytes(512)), mode="r|")
    member = [m for _, m in zip(range(4), parsed)][-1]  # after opt/, opt/weights/, opt/weights/sha256/
    assert member.size == 9 * 2**30 and member.name == "opt/weights/sha256/big"
    assert tail == bytes(-9 * 2**30 % 512) + bytes(1024)


def test_the_frame_plus_the_file_is_the_layer(tmp_path: Path) -> None:
    data = os.urandom(1234)
    (tmp_path / "f").write_bytes(data)
    head, tail = file_layer_frame("opt/weights/sha256/f", len(data))
    layer = TarBlob(pieces_of([Entry("opt/weights/sha256/f", size=len(data), source=tmp_path / "f")]))
    assert "sha256:" + hashlib.sha256(head + data + tail).hexdigest() == layer.diff_id


def test_a_streamed_archive_refuses_a_member_shorter_than_announced() -> None:
    good = b"".join(stream_archive([("a", 3, lambda: iter([b"abc"]))]))
    assert tarfile.open(fileobj=io.BytesIO(good)).extractfile("a").read() == b"abc"
    with pytest.raises(OSError, match="2 bytes where 3 were announced"):
        b"".join(stream_archive([("a", 3, lambda: iter([b"ab"]))]))


# -- the cache's records -------------------------------------------------------------------------
def test_a_cached_blob_is_trusted_until_it_changes_then_hashed_again(tmp_path: Path) -> None:
    cache, shas = _cache_with(tmp_path, {"f": b"x" * 100})
    sha = shas["f"]
    assert cache.unchanged(sha) and cache.check(sha)
    blob = cache.blob(sha)
    blob.chmod(0o644)
    blob.write_bytes(b"y" * 100)  # the same size, other bytes: its fingerprint moved
    assert not cache.unchanged(sha)
    assert not cache.check(sha) and not cache.has(sha)  # hashed, refused, evicted
    cache2, shas2 = _cache_with(tmp_path / "two", {"g": b"z" * 10})
    os.utime(cache2.blob(shas2["g"]), ns=(1, 1))  # touched, not changed: hashed once, stamped again
    assert cache2.check(shas2["g"]) and cache2.unchanged(shas2["g"])


def test_a_layer_is_read_once_then_known_from_its_record(tmp_path: Path, demo_manifest_data: dict) -> None:
    data = copy.deepcopy(demo_manifest_data)
    files = {}
    for artifact in data["sources"][0]["artifacts"]:
        payload = os.urandom(artifact["size"] % 5000 + 1) if artifact["path"].endswith(".safetensors") else b"{}"
        files[artifact["path"]] = payload
        artifact.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    data["runtime"]["large_file_bytes"] = 100
    manifest = Manifest.model_validate(data)
    cache, shas = _cache_with(tmp_path, {p: b for p, b in files.items()})
    plan = weights_plan(manifest)
    fetched = {item.key: FetchedFile(item.dest, item.sha256, item.size, 0.0, True, "cache") for item in plan.files}
    first = weights_layers(cache, plan, fetched)
    assert [layer.name for layer in first][-1] == "small" and len(first) == 4
    for layer in first:  # every digest is recorded now: the next build reads no weight byte for them
        key = layer.name.removeprefix("sha256-")
        assert layer.name == "small" or cache.layer(key, "v1") == (layer.diff_id, layer.size)
    # A record that lies is believed (it is the cache's own); shown here by forging one: no read happens.
    unet = shas["unet/diffusion_pytorch_model.safetensors"]
    cache.record_layer(unet, "v1", "sha256:" + "f" * 64, first[[l.name for l in first].index(f"sha256-{unet}")].size)
    again = weights_layers(cache, plan, fetched)
    assert f"sha256:{'f' * 64}" in [layer.diff_id for layer in again]


def test_the_smoke_mounts_put_every_file_where_the_layers_do(tmp_path: Path, demo_manifest_data: dict) -> None:
    data = copy.deepcopy(demo_manifest_data)
    files = {}
    for artifact in data["sources"][0]["artifacts"]:
        payload = f"{artifact['path']}\n".encode() * (40 if artifact["path"].endswith(".safetensors") else 1)
        files[artifact["path"]] = payload
        artifact.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    data["runtime"]["large_file_bytes"] = 1000
    manifest = Manifest.model_validate(data)
    cache, _ = _cache_with(tmp_path, files)
    plan = weights_plan(manifest)
    fetched = {item.key: FetchedFile(item.dest, item.sha256, item.size, 0.0, True, "cache") for item in plan.files}
    mounts = smoke_mounts(cache, plan, fetched, tmp_path / "scratch")
    # Lay the mounts out as a container would see them, and the layers as a pull would: the same tree.
    seen, layered = {}, {}
    for mount in mounts:
        if mount.source.is_dir():
            for path in mount.source.rglob("*"):
                rel = f"{mount.target}/{path.relative_to(mount.source)}"
                seen[rel] = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
        else:
            seen[mount.target] = mount.source.read_bytes()
    for layer in weights_layers(cache, plan, fetched):
        for member in tarfile.open(fileobj=io.BytesIO(b"".join(layer.blob.read()))):
            if member.isdir():
                continue
            archive = tarfile.open(fileobj=io.BytesIO(b"".join(layer.blob.read())))
            layered["/" + member.name] = member.linkname if member.issym() else archive.extractfile(member.name).read()
    assert {k: v for k, v in seen.items() if v is not None} == layered


# -- the config ----------------------------------------------------------------------------------
class _Engine:
    """The two answers read_code_image asks the engine for, as Docker 20.10 gave them for a
    code image of the demo (BuildKit: a RUN that changes nothing still makes a layer)."""

    def __init__(self, steps: list[tuple[int, str]], layers: int) -> None:
        self.steps = steps
        self.layers = layers

    def inspect(self, ref: str) -> dict:
        return {"Architecture": "amd64", "Os": "linux", "Created": "2026-12-04T19:20:32.438367365Z",
                "RootFS": {"Layers": [f"sha256:{i:064x}" for i in range(self.layers)]},
                "Config": {"Env": ["A=1"], "Cmd": ["python3", "-m", "server"], "User": "10001:10001",
                           "Hostname": "", "AttachStdin": False, "Labels": {"x": "y"}, "Volumes": None}}

    def history(self, ref: str) -> list[dict]:
        return [{"Created": 1796411261 + i, "CreatedBy": by, "Size": size, "Comment": "buildkit.dockerfile.v0"}
                for i, (size, by) in enumerate(self.steps)]


DEMO_STEPS = [
    (214937988, ""), (21620800, "RUN /bin/sh -c python3 -m venv /opt/venv # buildkit"), (0, "ENV PATH=..."),
    (1615337226, "RUN /bin/sh -c pip install ..."), (0, "ARG REQUIREMENTS_HASH"), (0, "USER root"),
    (8902, "RUN |1 BUILDER_REBUILD= /bin/sh -c useradd ..."), (0, "RUN |1 BUILDER_REBUILD= /bin/sh -c python3 -c ..."),
    (0, "WORKDIR /app"), (0, "RUN |1 BUILDER_REBUILD= /bin/sh -c ! test -e ... # builder:weights-layers"),
    (0, "ENV HF_HUB_OFFLINE=1"), (250644, "COPY server/ /app/server/ # buildkit"),
    (4099, "COPY manifest.json /app/manifest.json # buildkit"), (0, "LABEL a=b"), (0, "USER 10001:10001"),
    (0, "CMD [\"python3\" \"-m\" \"server\"]"),
]


def test_the_weights_go_after_the_marked_step_and_below_the_server_code() -> None:
    code = read_code_image(_Engine(DEMO_STEPS, 9), "sha256:" + "c" * 64)  # type: ignore[arg-type]
    assert code.split == 7 and code.marker == 9
    assert code.runtime == {"Env": ["A=1"], "Cmd": ["python3", "-m", "server"], "User": "10001:10001",
                            "Labels": {"x": "y"}}
    layered = [h for h in code.history if not h.get("empty_layer")]
    assert len(layered) == 9  # every layer has its history entry: the zero-byte RUNs and the WORKDIR
    weights = [WeightsLayer("sha256-a", TarBlob([], "sha256:" + "a" * 64), ("x",)),
               WeightsLayer("small", TarBlob([], "sha256:" + "b" * 64), ("y", "z"))]
    config = json.loads(compose_config(code, weights))
    ids = config["rootfs"]["diff_ids"]
    assert ids[:7] == list(code.diff_ids[:7]) and ids[7:9] == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    assert ids[9:] == list(code.diff_ids[7:])
    made = [h.get("created_by", "") for h in config["history"] if not h.get("empty_layer")]
    assert len(made) == len(ids)
    assert made[7:] == ["builder: weights sha256-a (1 file)", "builder: weights small (2 files)",
                        "COPY server/ /app/server/ # buildkit", "COPY manifest.json /app/manifest.json # buildkit"]
    assert compose_config(code, weights) == compose_config(code, weights)  # deterministic: one image id


def test_a_code_image_not_built_from_a_builder_template_is_refused() -> None:
    steps = [s for s in DEMO_STEPS if "builder:weights-layers" not in s[1]]
    with pytest.raises(DockerError, match="has no `builder:weights-layers` step"):
        read_code_image(_Engine(steps, 8), "sha256:" + "c" * 64)  # type: ignore[arg-type]


def test_a_step_above_the_marker_that_may_make_an_empty_layer_is_refused() -> None:
    steps = [*DEMO_STEPS[:12], (0, "WORKDIR /elsewhere"), *DEMO_STEPS[12:]]
    with pytest.raises(DockerError, match="cannot be told apart"):
        read_code_image(_Engine(steps, 10), "sha256:" + "c" * 64)  # type: ignore[arg-type]


def test_the_weights_paths_stay_out_of_the_code_images_config(demo_manifest_data: dict) -> None:
    code = CodeImage("sha256:" + "c" * 64, ("sha256:" + "1" * 64,), 1, "t", {"architecture": "amd64", "os": "linux"},
                     {}, ({"created": "t"}, {"created": "t", "empty_layer": True}), 1)
    config = json.loads(compose_config(code, []))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64]
