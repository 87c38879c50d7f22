"""The builder's own push against a real registry: uncompressed weights, skips and mounts,
resumes, retries, chunk limits, the smoke record's form, and every kind of registry auth."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import stat
import subprocess
import threading
import time
from pathlib import Path

import docker
import pytest

from builder.errors import RegistryError
from builder.registry import RegistryClient, RegistryRef
from builder.registry.auth import find_credentials
from builder.registry.layers import EngineLayers
from builder.registry.push import LAYER_GZIP, LAYER_TAR, MIB, PushSettings, PushStopped, Pusher, gzip_stream
from tests.engines import faulty_proxy, scratch_registry, second_engine
from tests.registry_auth import htpasswd_auth, token_service, write_htpasswd

DOCKER = "/usr/bin/docker"
BASE = "builder-local/debian:bookworm"


def test_gzip_members_are_one_deterministic_gzip_stream() -> None:
    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(300_000)) + b"weights " * 200_000
    chunks = [data[i:i + 70_000] for i in range(0, len(data), 70_000)]
    one = b"".join(gzip_stream(iter(chunks), 3, threads=1, block=256 * 1024))
    many = b"".join(gzip_stream(iter(chunks), 3, threads=3, block=256 * 1024))
    assert one == many  # threads change the speed, never the blob (its digest is remembered)
    assert one.count(b"\x1f\x8b\x08") >= 6  # several members...
    assert gzip.decompress(one) == data  # ...read back as one stream
    assert b"".join(gzip_stream(iter(chunks), 3, threads=1, block=512 * 1024)) != one


# -- with the engine -----------------------------------------------------------------------------




def weights_image(tmp_path: Path, seed: str, code: str, files: int = 2, kib: int = 3 * 1024) -> str:
    """An image with the builder's weights layout: one `COPY /export/sha256-...` layer per file,
    then a code layer (on no base: the weights are what these tests are about)."""
    names = [hashlib.sha256(f"{seed}/{i}".encode()).hexdigest() for i in range(files)]
    lines = [f"FROM {BASE} AS weights", f"RUN echo {seed}"]
    lines += [f"RUN mkdir -p /export/sha256-{n}/models/t && head -c {kib * 1024} /dev/urandom > /export/sha256-{n}/models/t/w{i}.bin"
              for i, n in enumerate(names)]
    lines += ["FROM scratch", *[f"COPY --from=weights /export/sha256-{n}/ /" for n in names],
              "COPY app.txt /app/app.txt"]
    ctx = tmp_path / f"ctx-{seed}-{hashlib.sha256(code.encode()).hexdigest()[:12]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    (ctx / "app.txt").write_text(code)
    iid = ctx / "iid"
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "--iidfile", str(iid), str(ctx)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return iid.read_text().strip()


def pusher(registry: str, state: Path, **settings) -> Pusher:
    return Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(docker.from_env()),
                  PushSettings(**{"chunk_bytes": 1 * MIB, **settings}), state_dir=state)


@pytest.fixture
def scratch(tmp_path: Path, docker_ready) -> str:
    with scratch_registry(tmp_path / "registry") as address:
        yield address


@pytest.mark.docker
def test_replaying_the_layer_store_gives_each_layer_byte_for_byte(docker_ready) -> None:
    client = docker.from_env()
    store = EngineLayers.open(client)
    image = client.images.get(BASE)
    config = store.config(image.id)
    assert "sha256:" + hashlib.sha256(config).hexdigest() == image.id
    for layer in store.layers(config):
        assert layer.sha256() == layer.diff_id
        cut = layer.size // 3
        assert b"".join(layer.read(0, cut)) + b"".join(layer.read(cut)) == b"".join(layer.read())


@pytest.mark.docker
def test_weights_go_up_uncompressed_and_a_version_bump_sends_no_weight_byte(tmp_path: Path, scratch: str) -> None:
    first = weights_image(tmp_path, "bump", "v1")
    ours = pusher(scratch, tmp_path / "state")
    digest = ours.push("team/model", "1.0.0", first)
    client = RegistryClient(RegistryRef.parse(scratch))
    body, media_type, _ = client.manifest("team/model", digest)
    manifest = json.loads(body)
    diff_ids = json.loads(client.blob("team/model", manifest["config"]["digest"]))["rootfs"]["diff_ids"]
    assert manifest["config"]["digest"] == first  # the image id the smoke ran on
    kinds = [layer["mediaType"] for layer in manifest["layers"]]
    assert kinds == [LAYER_TAR, LAYER_TAR, LAYER_GZIP]  # the weights, then the code
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        assert (layer["digest"] == diff_id) == (layer["mediaType"] == LAYER_TAR)
    assert ours.stats.weight_bytes_sent >= 2 * 3 * MIB

    with second_engine(tmp_path / "engine") as other:  # an engine with none of the layers takes it
        pulled = other.images.pull(f"{scratch}/team/model@{digest}")
        assert pulled.id == first and pulled.attrs["RootFS"]["Layers"] == diff_ids

    second = weights_image(tmp_path, "bump", "v2")  # same weights, new code
    again = pusher(scratch, tmp_path / "state")
    again.push("team/model-next", "1.0.1", second)
    assert again.stats.weight_bytes_sent == 0
    assert again.stats.mounted >= 2  # the weights, from the other repository
    assert again.stats.sent_bytes < 10_000


@pytest.mark.docker
def test_a_stopped_push_resumes_where_the_registry_left_it(tmp_path: Path, scratch: str) -> None:
    image = weights_image(tmp_path, "stop", "v1", files=2, kib=6 * 1024)
    first = pusher(scratch, tmp_path / "state", parallel=1)
    half = threading.Event()
    first.stop = half
    first.on_progress = lambda p: half.set() if p.done >= p.total / 2 else None
    with pytest.raises(PushStopped, match="run the same command again to go on"):
        first.push("team/stopped", "1", image)
    sent_before = first.stats.sent_bytes
    second = pusher(scratch, tmp_path / "state", parallel=1)
    digest = second.push("team/stopped", "1", image)
    total = second.stats.total_bytes
    left = total - sent_before
    assert second.stats.resumed_bytes > 0 or second.stats.present > 0
    assert second.stats.sent_bytes <= 1.1 * left
    assert RegistryClient(RegistryRef.parse(scratch)).image("team/stopped", "1").digest == digest


@pytest.mark.docker
def test_a_session_the_registry_lost_starts_that_blob_over(tmp_path: Path, scratch: str) -> None:
    image = weights_image(tmp_path, "lost", "v1", files=1, kib=4 * 1024)
    first = pusher(scratch, tmp_path / "state", parallel=1)
    stop = threading.Event()
    first.stop = stop
    first.on_progress = lambda p: stop.set() if p.done >= p.total / 3 else None
    with pytest.raises(PushStopped):
        first.push("team/lost", "1", image)
    for saved in (tmp_path / "state" / "uploads").glob("*.json"):
        session = json.loads(saved.read_text())
        saved.write_text(json.dumps({**session, "offset": session["offset"] + 1}))  # the registry disagrees
    second = pusher(scratch, tmp_path / "state", parallel=1)
    second.push("team/lost", "1", image)
    assert second.stats.resumed_bytes == 0 and second.stats.weight_bytes_sent >= 4 * MIB


@pytest.mark.docker
def test_retries_on_5xx_and_429_honour_chunk_minimum_and_stop_at_a_refusal(tmp_path: Path, scratch: str) -> None:
    image = weights_image(tmp_path, "flaky", "v1", files=1, kib=5 * 1024)
    failures = {"HEAD": 2, "PUT": 1, "PATCH": 1}
    patches_seen = []

    def fault(method, path, headers, body):
        if method == "PATCH":
            patches_seen.append(len(body))
            if len(patches_seen) == 2 and failures["PATCH"]:  # the second chunk is lost on the way
                failures["PATCH"] -= 1
                return (502, {}, b"")
            return None
        if method in failures and failures[method] > 0 and "/blobs/" in path:
            failures[method] -= 1
            return (503, {}, b"") if method == "HEAD" else (429, {"Retry-After": "0"}, b"")
        return None

    fault.after = lambda method, path, headers: {"OCI-Chunk-Min-Length": str(2 * MIB)} if method == "POST" else {}
    with faulty_proxy(scratch, fault) as (address, seen):
        ours = pusher(address, tmp_path / "state", chunk_bytes=1 * MIB, parallel=1)
        ours.client.backoff = 0.01
        digest = ours.push("team/flaky", "1", image)
    assert failures == {"HEAD": 0, "PUT": 0, "PATCH": 0}
    assert [r["status"] for r in seen if r["method"] == "HEAD"][:2] == [503, 503]
    patches = [(r["length"], r["status"]) for r in seen if r["method"] == "PATCH"]
    # The weights layer (5 MiB and its tar headers) in chunks of the registry's minimum, not the
    # configured 1 MiB, the lost chunk sent again from where the registry stood; then the code
    # layer, gzipped as it streams, small enough to go with its closing PUT.
    assert [p for p, _ in patches[:3]] == [2 * MIB] * 3 and [st for _, st in patches[:4]] == [202, 502, 202, 202]
    assert MIB < patches[3][0] < 2 * MIB and len(patches) == 4
    closing = [r["status"] for r in seen if r["method"] == "PUT" and "/blobs/" in r["path"] and r["length"]]
    assert closing == [201, 201]  # the config, and the code layer with its closing PUT
    assert RegistryClient(RegistryRef.parse(scratch)).image("team/flaky", "1").digest == digest

    with faulty_proxy(scratch, lambda m, p, h, b: (403, {}, b'{"errors":[{"code":"DENIED"}]}') if m == "POST" else None) \
            as (address, _):
        with pytest.raises(RegistryError, match=r"refused an upload to team/denied \(403\): run `docker login"):
            pusher(address, tmp_path / "state2").push("team/denied", "1", image)


def test_the_smoke_record_is_an_oci_artifact_with_a_fallback(tmp_path: Path, registry: str) -> None:
    client = RegistryClient(RegistryRef.parse(registry))
    image = client.put_document("smoke/modern", "1.0", "application/vnd.example.image+json", {"image": 1})
    client.record_smoke("smoke/modern", image, {"passed": True})
    body = json.loads(client.manifest("smoke/modern", f"{image.replace(':', '-')}.smoke")[0])
    assert body["artifactType"] == "application/vnd.builder.smoke.v1+json"
    assert body["subject"]["digest"] == image and body["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert client.get_document("smoke/modern", f"{image.replace(':', '-')}.smoke") == {"passed": True}

    refuse = lambda m, p, h, b: (400, {}, b'{"errors":[{"code":"MANIFEST_INVALID"}]}') \
        if m == "PUT" and b"artifactType" in b else None  # noqa: E731
    with faulty_proxy(registry, refuse) as (address, _):
        old = RegistryClient(RegistryRef.parse(address))
        old.record_smoke("smoke/modern", image, {"passed": False})
        tag = f"{image.replace(':', '-')}.smoke"
        legacy = json.loads(old.manifest("smoke/modern", tag)[0])
        assert "artifactType" not in legacy and legacy["config"]["mediaType"] == "application/vnd.builder.smoke.v1+json"
        assert old.get_document("smoke/modern", tag) == {"passed": False}


# -- auth ----------------------------------------------------------------------------------------

@pytest.fixture
def no_credentials(monkeypatch, tmp_path: Path) -> Path:
    """No docker login and no credential variables: a config directory of the test's own."""
    monkeypatch.delenv("BUILDER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("BUILDER_REGISTRY_PASSWORD", raising=False)
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


def test_basic_auth_takes_the_password_and_says_what_to_do_without_it(tmp_path: Path, monkeypatch, no_credentials) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret"})
    with scratch_registry(tmp_path / "registry", auth=htpasswd_auth(htpasswd)) as address:
        ref = RegistryRef.parse(address)
        with pytest.raises(RegistryError, match=r"asks for a user name and password and none is configured: run `docker login"):
            RegistryClient(ref).put_blob("team/app", b"x")
        monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", "alice")
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(RegistryError, match=r"refused the password of alice: run `docker login"):
            RegistryClient(ref).put_blob("team/app", b"x")
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "s3cret")
        client = RegistryClient(ref)
        digest = client.put_blob("team/app", b"hello")
        assert client.blob("team/app", digest) == b"hello"


def test_credentials_come_from_a_docker_credential_helper(tmp_path: Path, monkeypatch, no_credentials) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-buildertest"
    helper.write_text('#!/bin/sh\nread server\nprintf \'{"ServerURL":"%s","Username":"bob","Secret":"from-helper"}\' "$server"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"bob": "from-helper"})
    with scratch_registry(tmp_path / "registry", auth=htpasswd_auth(htpasswd)) as address:
        (no_credentials / "config.json").write_text(json.dumps({"credHelpers": {address: "buildertest"}}))
        found = find_credentials(address)
        assert found is not None and (found.username, found.password) == ("bob", "from-helper")
        client = RegistryClient(RegistryRef.parse(address))
        assert client.blob("team/app", client.put_blob("team/app", b"helper")) == b"helper"


def test_token_auth_asks_for_the_scopes_it_needs_and_refreshes(tmp_path: Path, monkeypatch, no_credentials) -> None:
    with token_service(tmp_path / "tokens", {"carol": "pw"}) as tokens, \
            scratch_registry(tmp_path / "registry", auth=tokens.registry_auth()) as address:
        ref = RegistryRef.parse(address)
        with pytest.raises(RegistryError, match=r"gives anonymous users no .*access: check the account's permissions"):
            RegistryClient(ref).put_blob("team/app", b"x")  # anonymous: a pull-only token
        monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", "carol")
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "nope")
        with pytest.raises(RegistryError, match=r"token service of 127.0.0.1:\d+ refused carol \(401\)"):
            RegistryClient(ref).put_blob("team/app", b"x")
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "pw")
        tokens.requests.clear()
        client = RegistryClient(ref)
        digest = client.put_blob("team/app", b"payload")
        assert ["repository:team/app:pull,push"] in [r["scopes"] for r in tokens.requests]
        location, _ = client.start_upload("team/copy", mount=(digest, "team/app"))
        assert location is None  # mounted: the token named both repositories
        assert ["repository:team/copy:pull,push", "repository:team/app:pull"] in [r["scopes"] for r in tokens.requests]

        tokens.lifetime = 1  # the registry will refuse these soon; the client believes 300 s
        client = RegistryClient(ref)
        client.auth._fetch = _believe_longer(client.auth._fetch)
        client.put_blob("team/app", b"first")
        asked = len(tokens.requests)
        time.sleep(2.2)
        assert client.blob("team/app", client.put_blob("team/app", b"second")) == b"second"
        assert len(tokens.requests) > asked  # refused as expired, asked again, went on


def _believe_longer(fetch):
    def wrapped(params, scopes):
        token, _ = fetch(params, scopes)
        return token, time.monotonic() + 300
    return wrapped


@pytest.mark.docker
def test_a_proxys_body_limit_turns_into_smaller_chunks(tmp_path: Path, scratch: str) -> None:
    import base64

    code = base64.b64encode(os.urandom(4 * MIB)).decode()  # 5.3 MiB of text: about 4 MiB gzipped
    image = weights_image(tmp_path, "limit", code, files=1, kib=5 * 1024)
    limit = 3 * MIB

    def fault(method, path, headers, body):
        return (413, {}, b"") if method in ("PUT", "PATCH") and len(body) > limit else None

    with faulty_proxy(scratch, fault) as (address, seen):
        ours = pusher(address, tmp_path / "state", chunk_bytes=8 * MIB)  # one PUT each, as far as we know
        digest = ours.push("team/limited", "1", image)
    sent = [(r["length"], r["status"]) for r in seen if r["method"] in ("PUT", "PATCH") and r["length"]]
    assert any(status == 413 for _, status in sent)  # the first try of the weights layer, whole
    assert all(length <= limit for length, status in sent if status != 413)
    assert RegistryClient(RegistryRef.parse(scratch)).image("team/limited", "1").digest == digest
