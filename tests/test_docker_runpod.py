"""Images built by builder, deployed the way RunPod runs them (issue 11): the RunPod stand-in pulls
each image by digest from a real registry, runs it with Docker and the template's environment,
health-checks it as RunPod does, and serves requests through it.

The demo model is built twice (1.0.0, 1.1.0), smoke-tested, pushed and promoted; a third image
(1.2.0) is the 1.1.0 image with a weights file taken out, so its loader fails at start."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time

import pytest
import requests
import yaml
from PIL import Image

from builder.registry import RegistryClient, RegistryRef
from tests.conftest import ROOT, make_project, run_builder, unique_name, wait_for, write_config
from tests.runpod_standin import RunPodStandIn
from tests.test_docker_build import build, result_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]

APPROVAL = {"approved_by": "legal", "approved_on": "2026-11-01", "reference": "LEGAL-11"}
PROMPT = {"prompt": "a photo of the cat", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}
TIMINGS: dict[str, float] = {}  # seconds from `builder deploy` to the first answered request, per surface


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, registry: str, hub, demo_manifest_data: dict) -> dict:
    """Three versions of the demo in the registry: 1.0.0 and 1.1.0 built, smoked and promoted to
    production (in that order), 1.2.0 an image whose model cannot load."""
    import docker

    tmp = tmp_path_factory.mktemp("runpod")
    data = json.loads(json.dumps(demo_manifest_data))
    data["name"] = unique_name("rp")
    data["license"]["approval"] = APPROVAL
    project = make_project(tmp, data)
    namespace = f"{registry}/{unique_name('ns')}"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "BUILDER_REGISTRY", "HF_ENDPOINT")}
    env.update({"BUILDER_CONFIG": str(write_config(tmp / "builder.yaml", ("local", hub.url))),
                "BUILDER_LEDGER": str(tmp / "ledger.sqlite3"), "HF_HOME": str(tmp / "hf"),
                "BUILDER_REGISTRY": namespace})
    digests = {}
    for number in ("1.0.0", "1.1.0"):
        data["version"] = number
        (project.manifests_dir / f"{data['name']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        result = result_of(build(project.root, data["name"], env, "--registry", namespace))
        digests[number] = result["digest_reference"].split("@")[1]
        promoted = run_builder(["--root", str(project.root), "promote", data["name"], number, "--to", "production"], env)
        assert promoted.returncode == 0, promoted.stderr
    repo = f"{namespace}/{data['name']}"
    client = docker.from_env()
    digests["1.2.0"] = _broken_copy(client, f"{repo}:1.1.0", repo, "1.2.0", RegistryClient(RegistryRef.parse(namespace)),
                                    data["name"])
    return {"project": project, "env": env, "name": data["name"], "repo": repo, "digests": digests, "docker": client}


def _broken_copy(client, source: str, repo: str, tag: str, registry: RegistryClient, name: str) -> str:
    """The source image with the pipeline's model_index.json removed: it builds, it runs, its loader fails."""
    config = client.images.pull(source).attrs["Config"]  # the build engine holds the code image only
    model_dir = next(e.split("=", 1)[1] for e in config["Env"] if e.startswith("BUILDER_MODEL_DIR="))
    container = client.containers.run(source, ["rm", "-f", f"{model_dir}/model_index.json"], user="root",
                                      network_mode="none", detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        labels = {**config["Labels"], "io.builder.manifest.version": tag}
        container.commit(repository=repo, tag=tag, conf={
            "Cmd": config["Cmd"], "User": config["User"], "Labels": labels, "Env": config["Env"],
            "WorkingDir": config["WorkingDir"], "Entrypoint": config["Entrypoint"]})
    finally:
        container.remove(force=True)
    for event in client.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    return registry.image(name, tag).digest


def cli(released: dict, stand_in: RunPodStandIn, *args: str) -> subprocess.CompletedProcess:
    return run_builder(["--root", str(released["project"].root), *args], {**released["env"], **stand_in.env()})


def deploy_started(released: dict, stand_in: RunPodStandIn, *args: str) -> subprocess.Popen:
    env = {**released["env"], **stand_in.env()}
    return subprocess.Popen([sys.executable, "-m", "builder", "--root", str(released["project"].root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def auth(stand_in: RunPodStandIn) -> dict[str, str]:
    return {"Authorization": f"Bearer {stand_in.state.api_key}"}


def assert_png(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (64, 64)


def version_served(url: str, headers: dict[str, str] | None = None) -> str | None:
    response = requests.get(f"{url}/metadata", headers=headers or {}, timeout=10)
    return response.json().get("version") if response.status_code == 200 else None


@pytest.fixture(scope="module", autouse=True)
def report_timings():
    """After the module: what the deploys measured, printed (pytest -s) and kept for as_built.md."""
    yield
    for surface, seconds in TIMINGS.items():
        print(f"deploy -> first answered request, {surface}: {seconds:.1f}s")
    path = ROOT / ".cache" / "measurements" / "runpod-deploys.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TIMINGS, indent=2))


@pytest.fixture
def stand_in(released: dict):
    with RunPodStandIn(docker=released["docker"]) as runpod:
        yield runpod


def test_a_load_balancing_endpoint_serves_a_prompt_then_rolls_back(released: dict, stand_in: RunPodStandIn) -> None:
    repo, digests = released["repo"], released["digests"]
    stand_in.add_endpoint("ep-lb", f"{repo}@{digests['1.0.0']}", type="LB",
                          env={"BUILDER_SERVE_MODE": "http", "PORT": "8000", "PORT_HEALTH": "8001"})
    lb = stand_in.lb_url("ep-lb")
    wait_for(lambda: version_served(lb, auth(stand_in)) == "1.0.0", 180, "the first worker serving 1.0.0")

    started = time.monotonic()
    proc = cli(released, stand_in, "deploy", released["name"], "1.1.0", "--target", "endpoint:ep-lb",
               "--poll", "0.5", "--timeout", "240")
    assert proc.returncode == 0, proc.stderr
    assert "serving as http" in proc.stdout
    answer = requests.post(f"{lb}/v1/predict", json=PROMPT, headers={**auth(stand_in), "Accept": "image/png"},
                           timeout=120)
    TIMINGS["load-balancing endpoint"] = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert_png(answer.content)
    assert version_served(lb, auth(stand_in)) == "1.1.0"
    assert requests.get(f"{lb}/ping", headers=auth(stand_in), timeout=10).status_code == 200
    # PORT_HEALTH apart from PORT: the worker answers /ping there, and only /ping.
    [worker] = [w for w in stand_in.workers_of("ep-lb") if w.state == "ready"]
    assert worker.ping_port != worker.port
    assert requests.get(f"http://127.0.0.1:{worker.ping_port}/ping", timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{worker.ping_port}/metadata", timeout=5).status_code == 404

    back = cli(released, stand_in, "rollback", released["name"], "--target", "endpoint:ep-lb", "--poll", "0.5",
               "--timeout", "240")
    assert back.returncode == 0, back.stderr
    assert f"rolled back endpoint:ep-lb to {repo}@{digests['1.0.0']}" in back.stdout
    assert version_served(lb, auth(stand_in)) == "1.0.0"
    answer = requests.post(f"{lb}/v1/predict", json=PROMPT, headers=auth(stand_in), timeout=120)
    assert answer.status_code == 200 and answer.json()["width"] == 64


def test_a_queue_endpoint_answers_runsync_with_the_image(released: dict, stand_in: RunPodStandIn) -> None:
    repo, digests = released["repo"], released["digests"]
    stand_in.add_endpoint("ep-q", f"{repo}@{digests['1.0.0']}", type="QB", env={"BUILDER_SERVE_MODE": "queue"})
    started = time.monotonic()
    proc = cli(released, stand_in, "deploy", released["name"], "1.1.0", "--target", "endpoint:ep-q",
               "--poll", "0.5", "--timeout", "240")
    assert proc.returncode == 0, proc.stderr
    assert "serving as queue" in proc.stdout
    queue = stand_in.queue_url("ep-q")
    done = requests.post(f"{queue}/runsync", json={"input": PROMPT}, headers=auth(stand_in), timeout=120).json()
    TIMINGS["queue endpoint"] = time.monotonic() - started
    assert done["status"] == "COMPLETED", done
    assert done["output"]["width"] == 64 and done["output"]["seed"] == 1
    assert_png(base64.b64decode(done["output"]["image"]))

    queued = requests.post(f"{queue}/run", json={"input": {**PROMPT, "seed": 2}}, headers=auth(stand_in),
                           timeout=30).json()
    assert queued["status"] in ("IN_QUEUE", "IN_PROGRESS")
    status: dict = {}

    def finished() -> bool:
        status.update(requests.get(f"{queue}/status/{queued['id']}", headers=auth(stand_in), timeout=10).json())
        return status["status"] in ("COMPLETED", "FAILED")

    wait_for(finished, 120, "the /run job")
    assert status["status"] == "COMPLETED" and status["output"]["seed"] == 2

    bad = requests.post(f"{queue}/runsync", json={"input": {**PROMPT, "width": 100000, "colour": "x" * 5000}},
                        headers=auth(stand_in), timeout=120).json()
    assert bad["status"] == "FAILED", bad
    assert "width" in json.dumps(bad["error"]) and "x" * 100 not in json.dumps(bad["error"])


def test_a_pod_restarts_on_the_new_image_and_serves_on_its_port(released: dict, stand_in: RunPodStandIn) -> None:
    repo, digests = released["repo"], released["digests"]
    stand_in.add_pod("pod-1", f"{repo}@{digests['1.0.0']}", ports="8000/http,22/tcp")
    pod = stand_in.pod_url("pod-1", 8000)
    wait_for(lambda: version_served(pod) == "1.0.0", 180, "the pod serving 1.0.0")
    started = time.monotonic()
    proc = cli(released, stand_in, "deploy", released["name"], "1.1.0", "--target", "pod:pod-1", "--poll", "0.5",
               "--timeout", "240")
    assert proc.returncode == 0, proc.stderr
    answer = requests.post(f"{pod}/v1/predict", json=PROMPT, headers={"Accept": "image/png"}, timeout=120)
    TIMINGS["pod"] = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert_png(answer.content)
    assert version_served(pod) == "1.1.0"
    assert stand_in.state.pods["pod-1"].image == f"{repo}@{digests['1.1.0']}"
    assert stand_in.state.credentials_seen == []  # the deploy asked the pod without the account's key


def test_an_image_whose_loader_fails_is_rolled_back_and_the_old_one_serves_throughout(
        released: dict, stand_in: RunPodStandIn) -> None:
    repo, digests, name = released["repo"], released["digests"], released["name"]
    stand_in.add_endpoint("ep-lb", f"{repo}@{digests['1.1.0']}", type="LB",
                          env={"BUILDER_SERVE_MODE": "http", "PORT": "8000", "PORT_HEALTH": "8000"})
    lb = stand_in.lb_url("ep-lb")
    wait_for(lambda: version_served(lb, auth(stand_in)) == "1.1.0", 180, "the worker serving 1.1.0")
    refused = cli(released, stand_in, "deploy", name, "1.2.0", "--target", "endpoint:ep-lb")
    assert refused.returncode == 2 and "no passed smoke test is recorded" in refused.stderr  # the gate holds
    deploying = deploy_started(released, stand_in, "deploy", name, "1.2.0", "--target", "endpoint:ep-lb",
                               "--force", "--reason", "test: a broken image", "--poll", "0.5", "--timeout", "45")
    try:
        wait_for(lambda: any(w.image.endswith(digests["1.2.0"]) for w in stand_in.workers_of("ep-lb")), 60,
                 "the broken worker starting")
        during = requests.post(f"{lb}/v1/predict", json=PROMPT, headers=auth(stand_in), timeout=120)
        assert during.status_code == 200 and version_served(lb, auth(stand_in)) == "1.1.0"
        out, err = deploying.communicate(timeout=180)
    finally:
        deploying.kill()
    assert deploying.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert f"endpoint ep-lb did not become healthy on {repo}@{digests['1.2.0']} within 45s" in last
    assert f"the endpoint is back on template" in last and "recorded as failed" in last
    assert stand_in.image_of("ep-lb") == f"{repo}@{digests['1.1.0']}"
    wait_for(lambda: all(not w.image.endswith(digests["1.2.0"]) for w in stand_in.workers_of("ep-lb")), 30,
             "the broken worker stopped")
    after = requests.post(f"{lb}/v1/predict", json=PROMPT, headers=auth(stand_in), timeout=120)
    assert after.status_code == 200 and version_served(lb, auth(stand_in)) == "1.1.0"
    history = json.loads(run_builder(["history", name, "--json"], released["env"]).stdout)
    failed = [e for e in history if e["event"] == "deploy" and e["digest"] == digests["1.2.0"]]
    assert [(e["outcome"], e["forced_reason"].split(" [")[0]) for e in failed] == [("timeout", "test: a broken image")]


def test_a_template_in_use_rolls_its_endpoint_to_the_new_image(released: dict, stand_in: RunPodStandIn) -> None:
    repo, digests = released["repo"], released["digests"]
    template = stand_in.add_endpoint("ep-t", f"{repo}@{digests['1.0.0']}", type="LB",
                                     env={"BUILDER_SERVE_MODE": "http", "PORT": "8000", "PORT_HEALTH": "8000"})
    lb = stand_in.lb_url("ep-t")
    wait_for(lambda: version_served(lb, auth(stand_in)) == "1.0.0", 180, "the worker serving 1.0.0")
    proc = cli(released, stand_in, "deploy", released["name"], "1.1.0", "--target", f"template:{template}")
    assert proc.returncode == 0, proc.stderr
    assert stand_in.state.templates[template]["imageName"] == f"{repo}@{digests['1.1.0']}"
    wait_for(lambda: version_served(lb, auth(stand_in)) == "1.1.0", 180, "the endpoint rolled to 1.1.0")
