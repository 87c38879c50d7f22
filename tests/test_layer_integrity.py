"""The push refuses to send what the engine did not build: a record that names a file behind a
link, a byte changed in a diff file, a gzip layer whose bytes are not its diff id; and it falls
back to the engine's push, with one line, where it may not read the layer store."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import random
import subprocess
import uuid
from pathlib import Path

import docker
import fastcrc
import pytest

from builder.config import PushConfig
from builder.docker import Docker
from builder.assemble import push_engine_image as push_image
from builder.registry import RegistryClient, RegistryRef, profiles
from builder.registry import layers as layer_store
from builder.registry.layers import EngineLayers, LayerMismatch, LayersUnavailable
from builder.registry.push import LAYER_GZIP, MIB, PushSettings, Pusher, _State
from builder.registry.blobs import Blob, BlobMismatch, Limits, PushStats, Tally
from builder.registry.upload import Uploader
from tests import registry_standin as standin
from tests.engines import scratch_registry
from tests.registry_auth import htpasswd_auth, write_htpasswd
from tests.test_registry_push import weights_image

DOCKER = "/usr/bin/docker"
BASE = "builder-local/debian:bookworm"


def _go_crc64_iso(data: bytes) -> int:
    """Go's hash/crc64 with crc64.MakeTable(crc64.ISO), bit by bit: the sum tar-split records."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_the_crc_is_the_one_tar_split_writes() -> None:
    assert fastcrc.crc64.go_iso(b"123456789") == 0xB90956C775A41001  # CRC-64/GO-ISO's check value
    data = random.Random(1).randbytes(3000)
    assert fastcrc.crc64.go_iso(data) == _go_crc64_iso(data)
    assert fastcrc.crc64.go_iso(data[1000:], fastcrc.crc64.go_iso(data[:1000])) == _go_crc64_iso(data)


@pytest.mark.parametrize("walk", [False, True], ids=["openat2", "walk"])
def test_a_file_is_opened_beneath_its_directory_and_never_through_a_link(walk: bool, tmp_path: Path, monkeypatch) -> None:
    if walk:  # a kernel without openat2: one component at a time, O_NOFOLLOW
        monkeypatch.setattr(layer_store._openat2, "usable", False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("x")
    (tmp_path / "a").symlink_to("/etc")
    (tmp_path / "b" / "l").symlink_to("f")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(layer_store.open_beneath(root, "b/f"))
        for name in ("a/shadow", "a", "b/l", "../etc/passwd", "b/../../etc/passwd"):
            with pytest.raises(OSError) as refused:
                os.close(layer_store.open_beneath(root, name))
            assert refused.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR), name
    finally:
        os.close(root)


# -- with the engine ---------------------------------------------------------------------------

@pytest.fixture
def scratch(tmp_path: Path, docker_ready) -> str:
    with scratch_registry(tmp_path / "registry") as address:
        yield address


def _build(tmp_path: Path, lines: list[str]) -> str:
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:8]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"builder-test/integrity:{uuid.uuid4().hex[:12]}"
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", tag, str(ctx)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return tag


def _pusher(address: str, state: Path) -> Pusher:
    return Pusher(RegistryClient(RegistryRef.parse(address)), EngineLayers.open(docker.from_env()),
                  PushSettings(chunk_bytes=1 * MIB), state_dir=state)


@pytest.mark.docker
def test_a_record_naming_a_file_behind_a_link_to_etc_sends_no_host_byte(tmp_path: Path, scratch: str) -> None:
    host = Path("/etc/shadow").read_bytes()
    if len(host) < 32:
        pytest.skip("this machine's /etc/shadow is too short to recognise")
    size = min(len(host), 4096)
    name = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    tag = _build(tmp_path, [
        f"FROM {BASE} AS weights",
        f"RUN mkdir -p /export/sha256-{name}/b && ln -s /etc /export/sha256-{name}/a "
        f"&& head -c {size} /dev/urandom > /export/sha256-{name}/b/shadow",
        "FROM scratch", f"COPY --from=weights /export/sha256-{name}/ /"])
    engine = docker.from_env()
    store = EngineLayers.open(engine)
    image_id = engine.images.get(tag).id
    diff_id = json.loads(store.config(image_id))["rootfs"]["diff_ids"][0]
    record = store.layerdb / diff_id.split(":", 1)[1] / "tar-split.json.gz"  # one layer: its chain id is its diff id
    original = record.read_bytes()
    crafted = gzip.decompress(original).replace(b'"name":"b/shadow"', b'"name":"a/shadow"')
    assert crafted != gzip.decompress(original)
    try:
        record.write_bytes(gzip.compress(crafted))  # the record now names a/shadow: through the link, /etc/shadow
        with standin.registry_standin(scratch, standin.Behaviour(keep_bodies=True)) as (address, log):
            with pytest.raises(LayerMismatch, match=r"a/shadow in layer sha256:\w+ leads through a symbolic link"):
                _pusher(address, tmp_path / "state").push("team/crafted", "1", image_id)
        bodies = [r.get("body", b"") for r in log.requests]
        assert not any(host[:size] in body or host[:32] in body for body in bodies)  # not one byte of it left
        assert RegistryClient(RegistryRef.parse(scratch)).manifest_digest("team/crafted", "1") is None
    finally:
        record.write_bytes(original)
        engine.images.remove(tag, force=True)


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.docker
@pytest.mark.parametrize("which", ["weights", "code"])
def test_one_byte_changed_in_a_diff_file_stops_the_push_before_its_blob_is_committed(which: str, tmp_path: Path,
                                                                                    scratch: str) -> None:
    image_id = weights_image(tmp_path, f"flip-{which}-{uuid.uuid4().hex[:6]}", "code " * 40000, files=1, kib=3 * 1024)
    store = EngineLayers.open(docker.from_env())
    layer = store.layers(store.config(image_id))[0 if which == "weights" else 1]
    piece = max((p for p in layer.pieces if p.path), key=lambda p: p.size)
    target = layer.diff_dir / piece.path
    _flip(target, piece.size // 2)
    try:
        with standin.registry_standin(scratch) as (address, log):
            with pytest.raises(LayerMismatch, match=r"does not match its tar record \(CRC-64\).*build again"):
                _pusher(address, tmp_path / "state").push("team/flipped", "1", image_id)
            committed = {u.committed for u in log.uploads.values() if u.committed}
    finally:
        _flip(target, piece.size // 2)
    client = RegistryClient(RegistryRef.parse(scratch))
    assert client.manifest_digest("team/flipped", "1") is None  # nothing tagged
    with standin.registry_standin(scratch) as (address, _):
        digest = _pusher(address, tmp_path / "state2").push("team/flipped", "1", image_id)  # the bytes restored: it goes
    blob = json.loads(client.manifest("team/flipped", digest)[0])["layers"][0 if which == "weights" else 1]["digest"]
    assert blob not in committed  # the changed layer had not been committed


class _Bytes:
    """A blob source of another kind than the engine's layer store (the interface the push needs)."""

    def __init__(self, data: bytes, diff_id: str) -> None:
        self.data, self.size, self.diff_id = data, len(data), diff_id

    def read(self, start: int = 0, end: int | None = None):
        end = self.size if end is None else end
        for at in range(start, end, 1 << 20):
            yield self.data[at:min(end, at + (1 << 20))]


@pytest.mark.parametrize("profile", ["default", "ghcr", "ecr"])
def test_a_gzip_layer_whose_bytes_are_not_its_diff_id_is_never_committed(profile: str, registry: str, tmp_path: Path) -> None:
    data = random.Random(2).randbytes(3 * MIB) + b"\0" * (30 * MIB)  # packs to more than one chunk anywhere
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"another layer").hexdigest()
    with standin.registry_standin(registry) as (address, log):
        client = RegistryClient(RegistryRef.parse(address), profile=profiles.by_name(profile))
        stats = PushStats()
        uploader = Uploader(client, _State(tmp_path / "state", address), Tally(stats, [], lambda: None),
                            Limits(client.profile, 8 * MIB), __import__("threading").Event())
        with pytest.raises(BlobMismatch, match=r"read back as sha256:\w+: .*nothing of it was committed"):
            uploader.send(f"{profile}/mismatch", Blob(LAYER_GZIP, source=_Bytes(data, wrong)))
        assert not [u for u in log.uploads.values() if u.committed]
        good = Blob(LAYER_GZIP, source=_Bytes(data, right))
        uploader.send(f"{profile}/match", good)
    assert gzip.decompress(RegistryClient(RegistryRef.parse(registry)).blob(f"{profile}/match", good.digest)) == data


# -- where the layer store cannot be read: the engine pushes ---------------------------------------

class _Rootless:
    """The real engine, saying what a rootless engine's `docker info` says."""

    def __init__(self, client) -> None:
        self._client = client
        self.api = client.api
        self.images = client.images

    def info(self) -> dict:
        info = self._client.info()
        return {**info, "SecurityOptions": [*(info.get("SecurityOptions") or []), "name=rootless"]}


@pytest.mark.docker
def test_a_rootless_engine_or_an_unreadable_file_falls_back_to_the_engines_push(tmp_path: Path, scratch: str,
                                                                                 monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image_id = weights_image(tmp_path, f"fallback-{uuid.uuid4().hex[:6]}", "v1", files=1, kib=1024)
    engine = docker.from_env()
    repository = f"{scratch}/team/fallback"
    engine.api.tag(image_id, repository, "1")
    said: list[str] = []
    client = RegistryClient(RegistryRef.parse(scratch))
    digest = push_image(Docker(_Rootless(engine)), client, "team/fallback", "1", image_id, PushConfig(), said.append,
                        lambda event: None)
    assert said == ["pushing through the Docker engine (gzip, one layer at a time): the engine runs rootless: its "
                    "layer store belongs to another user namespace"]
    assert client.manifest_digest("team/fallback", "1") == digest

    def refused(dir_fd: int, name: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", name)

    monkeypatch.setattr(layer_store, "open_beneath", refused)  # as a file owned by another user would answer
    said.clear()
    engine.api.tag(image_id, repository, "2")
    digest = push_image(Docker(engine), client, "team/fallback", "2", image_id, PushConfig(), said.append,
                        lambda event: None)
    assert len(said) == 1 and said[0].startswith("pushing through the Docker engine") \
        and "is not readable by this user" in said[0] and "PermissionError" not in said[0]
    assert client.manifest_digest("team/fallback", "2") == digest
    engine.api.remove_image(f"{repository}:1")
    engine.api.remove_image(f"{repository}:2")


@pytest.mark.docker
def test_the_engines_push_gets_the_builder_registry_credentials(tmp_path: Path, monkeypatch, docker_ready) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-login"))  # no `docker login` anywhere
    monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", "erin")
    monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "pushes-by-env")
    image_id = weights_image(tmp_path, f"creds-{uuid.uuid4().hex[:6]}", "v1", files=1, kib=256)
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"erin": "pushes-by-env"})
    engine = docker.from_env()
    with scratch_registry(tmp_path / "registry", auth=htpasswd_auth(htpasswd)) as address:
        engine.api.tag(image_id, f"{address}/team/creds", "1")
        client = RegistryClient(RegistryRef.parse(address))
        try:
            digest = push_image(Docker(engine), client, "team/creds", "1", image_id, PushConfig(engine="docker"),
                                lambda line: None, lambda event: None)
            assert client.manifest_digest("team/creds", "1") == digest
        finally:
            engine.api.remove_image(f"{address}/team/creds:1")
