"""The builder's push against registries that answer as GHCR, Docker Hub, ECR and a registry
without mounts do (tests/registry_standin.py, in front of the real distribution registry): a
multi-GB image goes up through each, is pulled by digest into a second engine and runs; a
connection cut mid-chunk resumes; a demo build pushed as a new user would push it gets through."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import docker
import pytest

from builder.config import PushConfig
from builder.docker import Docker
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers
from builder.registry.push import MIB, PushSettings, Pusher
from builder.assemble import push_engine_image as push_image
from builder.registry import profiles
from tests import registry_standin as standin
from tests.conftest import run_builder, unique_name, write_config
from tests.engines import scratch_registry, second_engine
from tests.registry_auth import token_service
from tests.test_registry_push import weights_image

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]
DOCKER = "/usr/bin/docker"
BASE = "builder-local/debian:bookworm"
GIB = 1024**3
USER, PASSWORD = "hubuser", "hub-secret"


# -- shared by the profiles: one multi-GB image, two registries, one empty engine ------------------

@pytest.fixture(scope="session")
def big_image(tmp_path_factory: pytest.TempPathFactory, docker_ready) -> str:
    """Two 1 GiB files of random weights, each its own weights layer, on the small Debian base;
    the image's command checks them (sha256sum -c). Built once per session."""
    ctx = tmp_path_factory.mktemp("big-image")
    seed = uuid.uuid4().hex
    names = [hashlib.sha256(f"{seed}/{i}".encode()).hexdigest() for i in range(2)]
    lines = [f"FROM {BASE} AS weights"]
    lines += [f"RUN mkdir -p /export/sha256-{n}/weights && head -c {GIB} /dev/urandom > /export/sha256-{n}/weights/w{i}.bin"
              for i, n in enumerate(names)]
    lines.append("RUN cd /export && sha256sum sha256-*/weights/*.bin | sed 's|  sha256-[0-9a-f]*/|  /|' > /SHA256SUMS")
    lines += [f"FROM {BASE}", *[f"COPY --from=weights /export/sha256-{n}/ /" for n in names],
              "COPY --from=weights /SHA256SUMS /SHA256SUMS", 'CMD ["sha256sum", "-c", "/SHA256SUMS"]']
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"builder-test/big:{seed[:12]}"
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", tag, str(ctx)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    engine = docker.from_env()
    image_id = engine.images.get(tag).id
    yield image_id
    engine.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, docker_ready) -> str:
    with scratch_registry(tmp_path_factory.mktemp("standin-registry")) as address:
        yield address


@pytest.fixture(scope="session")
def hub_upstream(tmp_path_factory: pytest.TempPathFactory, docker_ready):
    """Distribution with token auth, as Docker Hub: a token service of 300 s tokens."""
    work = tmp_path_factory.mktemp("hub-registry")
    with token_service(work / "tokens", {USER: PASSWORD}) as tokens, \
            scratch_registry(work / "registry", auth=tokens.registry_auth()) as address:
        yield address, tokens


@pytest.fixture(scope="session")
def puller(tmp_path_factory: pytest.TempPathFactory, docker_ready):
    with second_engine(tmp_path_factory.mktemp("puller")) as engine:
        yield engine


def pull_and_run(engine, reference: str, auth: dict | None = None) -> str:
    """Pull by digest into an engine that holds none of the layers, run it, empty the engine."""
    try:
        image = engine.images.pull(reference, auth_config=auth)
        return engine.containers.run(image.id, network_mode="none", remove=True).decode()
    finally:
        for image in engine.images.list(all=True):
            engine.images.remove(image.id, force=True)


CASES = {  # the stand-in's behaviour, and the profile the builder uses for it
    "ghcr": (standin.ghcr, "ghcr"),
    "dockerhub": (standin.dockerhub, "dockerhub"),
    "ecr": (standin.ecr, "ecr"),
    "no-mounts": (standin.no_mounts, "default"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_multi_gb_image_goes_up_through_each_registry_and_runs(case: str, big_image: str, upstream: str, hub_upstream,
                                                                 puller, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a push state of this test's own
    behaviour, profile = CASES[case]
    target, auth = upstream, None
    if case == "dockerhub":
        target, tokens = hub_upstream
        monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", USER)
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", PASSWORD)
        auth = {"username": USER, "password": PASSWORD}
    engine = Docker(docker.from_env(timeout=600))
    said: list[str] = []
    with standin.registry_standin(target, behaviour()) as (address, log):
        config = PushConfig(registries={address: profile})
        seed = f"seed-{case}/base"
        if case != "ghcr":  # the base pushed before, by these credentials: a mount will be asked for
            push_image(engine, RegistryClient(RegistryRef.parse(address)), seed, "1",
                       engine.client.images.get(BASE).id, config, said.append, lambda event: None)
        if case == "dockerhub":
            tokens.denied.add(seed)  # and then these credentials lost access to it
        repo = f"team/{case}"
        log.manifest_gets = 0
        requests_before = len(log.requests)
        client = RegistryClient(RegistryRef.parse(address))
        digest = push_image(engine, client, repo, "1", big_image, config, said.append, lambda event: None)
        seen = log.requests[requests_before:]
        sessions = log.sessions(repo)

    assert "pushed in" in said[-1]
    out = pull_and_run(puller, f"{target}/{repo}@{digest}", auth)
    assert out.count(": OK") == 2, out  # both weights files, byte for byte, in the engine that pulled them

    mounts = [r for r in seen if r["method"] == "POST" and "mount=" in r["path"]]
    uploads = [r for r in seen if r["method"] in ("PATCH", "PUT") and "/blobs/" in r["path"]]
    if case == "ghcr":
        assert not [r for r in seen if r["status"] == 416]  # the profile knew the 4 MiB limit
        assert all(r["length"] <= 4 * MIB for r in uploads if r["range"])
        streamed = [r for r in uploads if r["method"] == "PATCH" and not r["range"] and r["length"] >= GIB]
        assert len(streamed) == 2 and {r["status"] for r in streamed} == {202}  # each weights layer in one PATCH
    if case in ("ecr", "no-mounts"):
        assert mounts and {r["status"] for r in mounts} == {202}  # no mount: an upload session instead...
        committed = [s.committed for s in sessions]
        assert None not in committed and len(committed) == len(set(committed))  # ...used: one session per blob
        assert len(sessions) == len(json.loads(RegistryClient(RegistryRef.parse(upstream)).manifest(
            repo, digest)[0])["layers"]) + 1  # every layer and the config went up, each in one session
    if case == "ecr":
        assert {r["status"] for r in uploads if r["method"] == "PATCH"} == {201}
        assert [r for r in uploads if r["method"] == "PUT" and r["range"] and r["length"] > 0]  # the last part closes
    if case == "dockerhub":
        assert [r for r in mounts if f"from={seed}" in r["path"] and r["status"] == 401]  # insufficient_scope...
        assert log.manifest_gets == 0  # ...then an upload; and no counted pull
        assert any(f"repository:{seed}:pull" in r["scopes"] for r in tokens.requests)


# -- a connection cut mid-chunk ----------------------------------------------------------------

@pytest.fixture
def scratch(tmp_path: Path, docker_ready) -> str:
    with scratch_registry(tmp_path / "registry") as address:
        yield address


def _pusher(address: str, state: Path, profile: str = "default", **settings) -> Pusher:
    return Pusher(RegistryClient(RegistryRef.parse(address)), EngineLayers.open(docker.from_env()),
                  PushSettings(**{"chunk_bytes": 1 * MIB, "profile": profiles.by_name(profile), **settings}),
                  state_dir=state)


@pytest.mark.parametrize(("fault", "profile"), [("cut", "default"), ("502", "default"), ("cut", "ghcr")])
def test_a_chunk_cut_halfway_resumes_that_blob_from_the_registrys_range(fault: str, profile: str, tmp_path: Path,
                                                                         scratch: str) -> None:
    image = weights_image(tmp_path, f"cut-{fault}-{profile}", "v1", files=2, kib=6 * 1024)
    rules = standin.ghcr() if profile == "ghcr" else standin.Behaviour()
    if fault == "cut":
        rules.cut_patch = 3 if profile == "default" else 1
    else:
        rules.fail_patch = 3
    with standin.registry_standin(scratch, rules) as (address, log):
        ours = _pusher(address, tmp_path / "state", profile, parallel=2)
        ours.client.backoff = 0.01
        digest = ours.push("team/cut", "1", image)
    statuses = Counter(r["status"] for r in log.requests if r["method"] == "PATCH")
    assert statuses["cut" if fault == "cut" else 502] == 1
    assert ours.stats.resumes >= 1 and ours.stats.restarts == 0  # on in the same session, from its Range
    assert len(log.sessions("team/cut")) == ours.stats.blobs and all(s.committed for s in log.sessions("team/cut"))
    weights = 2 * 6 * MIB
    assert ours.stats.weight_bytes_sent <= weights + 6 * MIB + 8192  # at most the broken request again
    assert RegistryClient(RegistryRef.parse(scratch)).manifest_digest("team/cut", "1") == digest


# -- tried as a new user would: `builder build` through the stand-in ------------------------------

def test_a_build_pushed_as_a_new_user_would_through_ghcr_then_ecr(registry: str, isolated_env: dict, hub,
                                                                  tmp_path: Path) -> None:
    """GHCR first, with nothing configured: the 416 names the limit and the push shrinks its
    chunks. Then the same proxy answers as ECR, configured as such: every blob a mount is asked
    for comes back as an upload session, which the push uses: one session per blob."""
    env = {**isolated_env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with standin.registry_standin(registry, standin.ghcr()) as (address, log):
        first = f"{address}/{unique_name('ghcr')}"
        proc = run_builder(["build", "demo", "--json", "--registry", first], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["pushed"]
        refused = [r for r in log.requests if r["status"] == 416]
        assert refused and all(r["length"] > 4 * MIB for r in refused)
        assert all(r["length"] <= 4 * MIB for r in log.requests if r["range"] and r["status"] != 416)

        log.reset(standin.ecr())  # the same host, now answering as ECR does
        second = f"{address}/{unique_name('ecr')}"
        config = write_config(tmp_path / "ecr.yaml", ("local", hub.url), push={"registries": {address: "ecr"}})
        proc = run_builder(["build", "demo", "--json", "--registry", second], {**env, "BUILDER_CONFIG": str(config)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["pushed"]
        mounts = [r for r in log.requests if r["method"] == "POST" and "mount=" in r["path"]]
        assert mounts and {r["status"] for r in mounts} == {202}  # the blobs the first push left: no mounts here
        sessions = log.sessions(second.split("/", 1)[1] + "/demo")
        committed = [s.committed for s in sessions]
        assert None not in committed and len(committed) == len(set(committed))  # exactly one session per blob
        assert len(committed) >= len(mounts)
