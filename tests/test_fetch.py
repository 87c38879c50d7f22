"""The fetch engine against the loopback Hub, with real huggingface_hub and injected faults.

Each case runs `python -m builder.fetch PLAN EXPORT --cache DIR --config FILE`, the very command
the weights build stage runs, as a separate process (so kill -9 can be tested for real)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import from_marker
from builder.fetch import ContentCache, parse_attempt
from builder.manifest import Manifest
from builder.weights import weights_plan
from tests.conftest import wait_for
from tests.localhub import Fault, LocalHub

ROOT = Path(__file__).resolve().parent.parent
UNET = "5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4"
VAE = "b1f9201a6513c788b70408de91e0105515f9c2da33f7642e1864c3ed93ceb1e9"
BIG_SIZE = 48 * 1024 * 1024
FAST = {"backoff_base": 0.05, "backoff_max": 0.5, "read_timeout": 3, "connect_timeout": 2, "progress_seconds": 1,
        "chunk_bytes": 8 * 1024 * 1024, "parts": 4}


def fetch_config(tmp_path: Path, *mirrors: tuple[str, str], **tuning) -> Path:
    path = tmp_path / f"fetch-{len(list(tmp_path.glob('fetch-*.json')))}.json"
    path.write_text(json.dumps({"mirrors": [{"name": n, "url": u} for n, u in mirrors], **FAST, **tuning}))
    return path


def start_fetch(plan: dict, cache: Path, config: Path, tmp_path: Path, token: str | None = None,
                env: dict[str, str | None] | None = None):
    plan_file = tmp_path / "weights.json"
    plan_file.write_text(json.dumps(plan))
    args = [sys.executable, "-m", "builder.fetch", str(plan_file), "--cache", str(cache), "--config", str(config)]
    if token is not None:
        secret = tmp_path / "hf_token"
        secret.write_text(token + "\n")
        args += ["--token-file", str(secret)]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    env.pop("HF_TOKEN", None)
    env.pop("HF_ENDPOINT", None)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def run_fetch(plan: dict, cache: Path, config: Path, tmp_path: Path, token: str | None = None,
              env: dict[str, str | None] | None = None):
    proc = start_fetch(plan, cache, config, tmp_path, token, env)
    stdout, stderr = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def attempts_of(result) -> list:
    return [a for a in map(parse_attempt, result.stdout.splitlines()) if a is not None]


def error_of(result):
    errors = [e for e in map(from_marker, result.stderr.splitlines()) if e is not None]
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(errors) == 1, result.stderr
    assert "\n" not in str(errors[0])
    return errors[0]


def gets(hub: LocalHub, fragment: str = "") -> list:
    return [r for r in hub.requests if r.method == "GET" and fragment in r.path and "/api/" not in r.path]


@pytest.fixture
def demo_plan(demo_manifest_data) -> dict:
    return weights_plan(Manifest.model_validate(demo_manifest_data)).to_json()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def config(tmp_path: Path, hub: LocalHub) -> Path:
    return fetch_config(tmp_path, ("local", hub.url))


@pytest.fixture(autouse=True)
def _clean_hub(hub: LocalHub):
    hub.clear_faults()
    hub.clear_log()
    yield
    hub.clear_faults()


# -- the happy path and the cache ------------------------------------------------------------
def fetched_from(plan: dict, cache: Path) -> dict:
    """What a build holds after its fetch: every planned file, found in the cache."""
    from builder.fetch import FetchedFile, PlannedFile

    out = {}
    for entry in plan["files"]:
        item = PlannedFile(**entry)
        out[item.key] = FetchedFile(item.dest, item.sha256, item.size, 0.0, True, "cache")
    return out


def test_fetch_verifies_into_the_cache_and_the_layers_come_from_it(demo_plan, hub, cache, config, tmp_path, tiny_sd) -> None:
    import io
    import tarfile

    from builder.weights import weights_layers
    from builder.weights.layout import WeightsPlan

    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fetched 11 files, 6762160 bytes, for demo (6762160 bytes downloaded" in result.stdout
    store = ContentCache(cache)
    entries = {row["sha256"] for row in store.entries()}
    assert {UNET, VAE} <= entries and len(entries) == 11
    assert {a.outcome for a in attempts_of(result)} == {"ok"}
    # Each large file's layer digest was recorded while it downloaded, and is the digest of the
    # tar the builder makes of it.
    plan = WeightsPlan.from_json(demo_plan)
    recorded = store.layer(UNET, "v1")
    layers = {layer.name: layer for layer in weights_layers(store, plan, fetched_from(demo_plan, cache))}
    assert recorded is not None and recorded[0] == layers[f"sha256-{UNET}"].diff_id
    unet = tarfile.open(fileobj=io.BytesIO(b"".join(layers[f"sha256-{UNET}"].blob.read())))
    assert [m.name for m in unet] == ["opt", "opt/weights", "opt/weights/sha256", f"opt/weights/sha256/{UNET}"]
    assert unet.extractfile(f"opt/weights/sha256/{UNET}").read() == (tiny_sd / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    small = tarfile.open(fileobj=io.BytesIO(b"".join(layers["small"].blob.read())))
    members = {m.name: m for m in small}
    assert members["opt/models/demo/unet/diffusion_pytorch_model.safetensors"].linkname == f"../../../weights/sha256/{UNET}"
    assert small.extractfile("opt/models/demo/model_index.json").read() == (tiny_sd / "model_index.json").read_bytes()
    for member in [*unet, *members.values()]:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", ""), member.name
        if not member.issym():
            assert member.mode == (0o755 if member.isdir() else 0o644), member.name


def test_a_second_fetch_downloads_nothing(demo_plan, hub, cache, config, tmp_path) -> None:
    assert run_fetch(demo_plan, cache, config, tmp_path).returncode == 0
    hub.clear_log()
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert gets(hub) == [] and hub.requests == []
    assert "(0 bytes downloaded, the rest from the cache)" in result.stdout
    assert {a.outcome for a in attempts_of(result)} == {"cached"}


def test_two_models_sharing_a_file_download_it_once(demo_plan, hub, cache, config, tmp_path, tiny_sd) -> None:
    other = tmp_path / "other-repo"
    (other / "vae").mkdir(parents=True)
    (other / "vae/diffusion_pytorch_model.safetensors").write_bytes((tiny_sd / "vae/diffusion_pytorch_model.safetensors").read_bytes())
    (other / "README.md").write_text("another model that reuses the demo's VAE\n")
    commit = hub.publish("builder-test/shares-vae", other)
    readme = (other / "README.md").read_bytes()
    plan = {"model": "other", "model_dir": "/opt/models/other", "files": [
        {"repo_id": "builder-test/shares-vae", "repo_type": "model", "revision": commit, "path": "README.md",
         "dest": "README.md", "sha256": hashlib.sha256(readme).hexdigest(), "size": len(readme), "layer": "small"},
        {"repo_id": "builder-test/shares-vae", "repo_type": "model", "revision": commit,
         "path": "vae/diffusion_pytorch_model.safetensors", "dest": "vae/diffusion_pytorch_model.safetensors",
         "sha256": VAE, "size": 2646532, "layer": f"sha256-{VAE}"},
    ]}
    assert run_fetch(demo_plan, cache, config, tmp_path).returncode == 0
    hub.clear_log()
    result = run_fetch(plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r.path.rsplit("/", 1)[-1] for r in gets(hub)] == ["README.md"]
    assert ContentCache(cache).blob(VAE).stat().st_size == 2646532


def test_a_cache_entry_whose_bytes_do_not_match_its_name_is_never_served(demo_plan, hub, cache, config, tmp_path) -> None:
    assert run_fetch(demo_plan, cache, config, tmp_path).returncode == 0
    blob = ContentCache(cache).blob(VAE)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    hub.clear_log()
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"cache entry {VAE[:16]}… for vae/diffusion_pytorch_model.safetensors was corrupt" in result.stdout
    assert [r.path.rsplit("/", 1)[-1] for r in gets(hub)] == ["diffusion_pytorch_model.safetensors"]
    assert hashlib.sha256(ContentCache(cache).blob(VAE).read_bytes()).hexdigest() == VAE


# -- wrong pins --------------------------------------------------------------------------------
def _nothing_kept(cache: Path, *digests: str) -> None:
    kept = {row["sha256"] for row in ContentCache(cache).entries()}
    assert not kept & set(digests)
    assert not list((ContentCache(cache).root / "partial").glob("*.part"))


def test_a_wrong_sha256_of_a_git_file_fails_after_download_and_keeps_nothing(demo_manifest_data, hub, cache, config, tmp_path) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"][7]["sha256"] = "0" * 64  # unet/config.json, kept in plain git
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).to_json(), cache, config, tmp_path))
    actual = "2fb1db3e93bcde65dd281bd21a4645a0610b74a85bfecea4f1f51eb42b696430"
    assert type(error).__name__ == "ChecksumMismatch"
    assert str(error) == (f"demo: unet/config.json from builder-demo/tiny-sd@abaa7aa9b35f via local: sha256 mismatch: "
                          f"expected {'0' * 64}, got {actual}")
    assert len(gets(hub, "unet/config.json")) == 2  # once more from scratch before blaming the mirror
    _nothing_kept(cache, actual)


def test_a_wrong_sha256_of_an_lfs_file_fails_before_download(demo_manifest_data, hub, cache, config, tmp_path) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"][8]["sha256"] = "e" * 64
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).to_json(), cache, config, tmp_path))
    assert str(error).endswith(f"sha256 mismatch: expected {'e' * 64}, the Hub's LFS oid is {UNET}")
    assert gets(hub, "unet/diffusion_pytorch_model.safetensors") == []


def test_a_wrong_size_fails_before_download(demo_manifest_data, hub, cache, config, tmp_path) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"][0]["size"] = 320
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).to_json(), cache, config, tmp_path))
    assert "README.md from builder-demo/tiny-sd@abaa7aa9b35f via local: size mismatch: expected 320 bytes, the Hub reports 321" in str(error)
    assert gets(hub, "README.md") == []


# -- faults that retries survive ---------------------------------------------------------------
def test_5xx_for_the_first_requests_then_success(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("status", path="vae/diffusion_pytorch_model.safetensors", method=None, times=3, status=503))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    vae = [a for a in attempts_of(result) if a.path == "vae/diffusion_pytorch_model.safetensors"]
    assert [a.outcome for a in vae] == ["retry", "retry", "retry", "ok"]
    assert all(a.error == "HTTP 503" for a in vae[:3])


def test_429_honours_retry_after(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("status", path="text_encoder/model.safetensors", method="GET", times=1, status=429, retry_after="2"))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "retrying text_encoder/model.safetensors via local at byte 0 in 2.0s: HTTP 429" in result.stdout


def test_a_dropped_connection_resumes_from_the_byte_it_reached(demo_plan, hub, cache, tmp_path) -> None:
    config = fetch_config(tmp_path, ("local", hub.url), parts=1)
    hub.inject(Fault("drop", path="unet/diffusion_pytorch_model.safetensors", after_bytes=1_500_000))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = gets(hub, "unet/diffusion_pytorch_model.safetensors")
    assert first.range is None and first.sent == 1_500_000  # one stream: a plain GET
    resumed_at = int(second.range.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at <= 1_500_000  # whole chunks written before the drop are kept
    assert second.sent == 3964928 - resumed_at


def test_a_slow_trickle_is_slow_but_not_an_error(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("trickle", path="tokenizer/tokenizer.json", rate=8_000))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(gets(hub, "tokenizer/tokenizer.json")) == 1


def test_a_stall_longer_than_the_read_timeout_is_retried(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("stall", path="vae/diffusion_pytorch_model.safetensors", after_bytes=100_000, stall_seconds=5))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(a.outcome == "retry" and "ReadTimeout" in (a.error or "") for a in attempts_of(result))


def test_corrupted_bytes_once_are_fetched_again(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("corrupt", path="text_encoder/config.json", after_bytes=10))
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(gets(hub, "text_encoder/config.json")) == 2


def test_corrupted_bytes_every_time_fail_and_never_reach_the_cache(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.inject(Fault("corrupt", path="text_encoder/config.json", after_bytes=10, times=-1))
    error = error_of(run_fetch(demo_plan, cache, config, tmp_path))
    assert "text_encoder/config.json from builder-demo/tiny-sd@abaa7aa9b35f via local: sha256 mismatch: expected 27d29b8d" in str(error)
    assert ", got " in str(error)
    _nothing_kept(cache, str(error).rsplit("got ", 1)[1])


# -- faults that end in one line ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update(repo_id="builder-demo/nope"), "repository builder-demo/nope not found via local (http://"),
        (lambda s: s.update(revision="f" * 40), f"revision {'f' * 40} not found in builder-demo/tiny-sd via local"),
        (lambda s: s["artifacts"][0].update(path="MISSING.md"), "MISSING.md not found in builder-demo/tiny-sd@abaa7aa9b35f via local"),
    ],
)
def test_not_found_errors_are_one_actionable_line(demo_manifest_data, hub, cache, config, tmp_path, change, expected) -> None:
    data = copy.deepcopy(demo_manifest_data)
    change(data["sources"][0])
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).to_json(), cache, config, tmp_path))
    assert type(error).__name__ == "DownloadError"
    assert expected in str(error), str(error)


def test_5xx_that_never_ends_gives_up_with_the_reason(demo_plan, hub, cache, tmp_path) -> None:
    config = fetch_config(tmp_path, ("local", hub.url), attempts=3)
    hub.inject(Fault("status", path="README.md", method=None, times=-1, status=502))
    error = error_of(run_fetch(demo_plan, cache, config, tmp_path))
    assert str(error).startswith("demo: cannot fetch README.md from builder-demo/tiny-sd@abaa7aa9b35f via local")
    assert "gave up after 3 failures in a row: HTTP 502" in str(error)


@pytest.fixture(scope="module")
def gated_hub(tmp_path_factory, tiny_sd: Path):
    with LocalHub(tmp_path_factory.mktemp("gated"), cdn=True) as local_hub:
        commit = local_hub.publish("builder-demo/tiny-sd-gated", tiny_sd, gated_tokens={"hf_right_token"})
        yield local_hub, commit


def _gated_plan(demo_manifest_data, commit: str) -> dict:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0].update(repo_id="builder-demo/tiny-sd-gated", revision=commit, gated=True)
    return weights_plan(Manifest.model_validate(data)).to_json()


def test_gated_repo_without_token_says_to_accept_the_licence(demo_manifest_data, gated_hub, cache, tmp_path) -> None:
    local_hub, commit = gated_hub
    config = fetch_config(tmp_path, ("gated", local_hub.url))
    error = error_of(run_fetch(_gated_plan(demo_manifest_data, commit), cache, config, tmp_path))
    assert "is gated and no token was passed: accept its licence at" in str(error)
    assert "set HF_TOKEN" in str(error)


def test_gated_repo_with_a_token_lacking_access(demo_manifest_data, gated_hub, cache, tmp_path) -> None:
    local_hub, commit = gated_hub
    config = fetch_config(tmp_path, ("gated", local_hub.url))
    result = run_fetch(_gated_plan(demo_manifest_data, commit), cache, config, tmp_path, token="hf_wrong")
    assert "the token passed has no access: accept the licence" in str(error_of(result))
    assert "hf_wrong" not in result.stderr + result.stdout


def test_large_files_follow_the_cdn_redirect_without_the_token(demo_manifest_data, gated_hub, cache, tmp_path) -> None:
    local_hub, commit = gated_hub
    local_hub.clear_log()
    config = fetch_config(tmp_path, ("gated", local_hub.url))
    result = run_fetch(_gated_plan(demo_manifest_data, commit), cache, config, tmp_path, token="hf_right_token")
    assert result.returncode == 0, result.stderr
    assert "hf_right_token" not in result.stderr + result.stdout
    hub_gets = [r for r in local_hub.requests if r.origin == "hub" and r.method == "GET" and "/resolve/" in r.path]
    cdn_gets = [r for r in local_hub.requests if r.origin == "cdn"]
    assert len(cdn_gets) == 3  # the three safetensors (LFS) files
    assert all(r.token is None for r in cdn_gets), "the token must not leave the Hub for its CDN"
    assert len(hub_gets) == 8 and all(r.token == "hf_right_token" for r in hub_gets)


def test_an_invalid_token_is_one_line(demo_plan, hub, cache, config, tmp_path) -> None:
    hub.state.valid_tokens = {"hf_valid"}
    try:
        result = run_fetch(demo_plan, cache, config, tmp_path, token="hf_expired")
    finally:
        hub.state.valid_tokens = None
    error = error_of(result)
    assert "refused the token (401) for builder-demo/tiny-sd: check HF_TOKEN" in str(error), str(error)
    assert "hf_expired" not in result.stdout + result.stderr


# -- mirrors -----------------------------------------------------------------------------------
def test_a_dead_mirror_falls_back_to_the_next(demo_plan, hub, cache, tmp_path) -> None:
    config = fetch_config(tmp_path, ("dead", "http://127.0.0.1:9"), ("local", hub.url), attempts=2)
    result = run_fetch(demo_plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    by_mirror = {(a.mirror, a.outcome) for a in attempts_of(result)}
    assert ("dead", "failed") in by_mirror and ("local", "ok") in by_mirror


def test_all_mirrors_failing_lists_each_last_error(demo_manifest_data, hub, cache, tmp_path) -> None:
    config = fetch_config(tmp_path, ("dead", "http://127.0.0.1:9"), ("local", hub.url), attempts=2)
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"] = data["sources"][0]["artifacts"][:1]
    data["sources"][0]["artifacts"][0]["path"] = "NOPE.md"
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).to_json(), cache, config, tmp_path))
    message = str(error)
    assert message.startswith("demo: NOPE.md from builder-demo/tiny-sd@abaa7aa9b35f: all 2 mirrors failed: dead: ")
    assert "ConnectError" in message and "local: NOPE.md not found" in message


# -- big files: ranges, resume after kill -9, space --------------------------------------------
@pytest.fixture(scope="module")
def big_repo(tmp_path_factory, hub: LocalHub) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("big")
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    for name in ("a.json", "b.txt", "c.json"):
        (root / name).write_text(f"{name}\n" * 100)
    commit = hub.publish("builder-test/big", root)
    files = []
    for name in ("a.json", "b.txt", "c.json", "big.bin"):
        data = (root / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        files.append({"repo_id": "builder-test/big", "repo_type": "model", "revision": commit, "path": name, "dest": name,
                      "sha256": digest, "size": len(data), "layer": f"sha256-{digest}" if name == "big.bin" else "small"})
    return commit, {"model": "big", "model_dir": "/opt/models/big", "files": files}


def test_a_large_file_comes_down_in_parallel_ranges(big_repo, hub, cache, config, tmp_path) -> None:
    _, plan = big_repo
    result = run_fetch(plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    ranges = sorted(r.range for r in gets(hub, "big.bin"))
    step = 8 * 1024 * 1024  # chunk_bytes in FAST
    assert ranges == sorted(f"bytes={start}-{start + step - 1}" for start in range(0, BIG_SIZE, step))
    big = plan["files"][3]["sha256"]
    assert hashlib.sha256(ContentCache(cache).blob(big).read_bytes()).hexdigest() == big


def test_kill_9_mid_file_then_rerun_resumes_and_skips_finished_files(big_repo, hub, cache, config, tmp_path) -> None:
    _, plan = big_repo
    hub.inject(Fault("trickle", path="big.bin", rate=2_000_000, times=-1))
    proc = start_fetch(plan, cache, config, tmp_path)
    part = ContentCache(cache).partial(plan["files"][3]["sha256"])
    small = [f["sha256"] for f in plan["files"][:3]]

    def halfway() -> bool:
        state = json.loads(part.with_suffix(".json").read_text())
        return all(ContentCache(cache).has(s) for s in small) and sum(seg[2] for seg in state["segments"]) > 4_000_000

    wait_for(halfway, 60, "the large file to be part-way", lambda: "exited" if proc.poll() is not None else None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = sum(seg[2] for seg in json.loads(part.with_suffix(".json").read_text())["segments"])
    hub.clear_faults()
    hub.clear_log()
    result = run_fetch(plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming big.bin" in result.stdout
    assert [r.path for r in gets(hub) if not r.path.endswith("big.bin")] == []  # finished files: not asked again
    big_gets = gets(hub, "big.bin")
    assert big_gets and not [r for r in big_gets if r.range.startswith("bytes=0-")]
    assert sum(r.sent for r in big_gets) == BIG_SIZE - recorded  # exactly the bytes not yet on disk
    big = plan["files"][3]["sha256"]
    assert hashlib.sha256(ContentCache(cache).blob(big).read_bytes()).hexdigest() == big
    # The layer digest recorded across the kill and the resume is the digest of the file's layer.
    from builder.weights.layers import file_layer
    from builder.weights.layout import WeightsPlan

    recorded = ContentCache(cache).layer(big, "v1")
    ContentCache(cache).record_layer(big, "v1", "sha256:" + "0" * 64, 0)  # forget it: computed afresh below
    assert recorded is not None and recorded[0] == file_layer(ContentCache(cache), WeightsPlan.from_json(plan), big).diff_id


def test_not_enough_space_fails_before_the_first_byte(big_repo, hub, cache, config, tmp_path) -> None:
    _, plan = big_repo
    plan = copy.deepcopy(plan)
    plan["files"][3]["size"] = 10**18
    error = error_of(run_fetch(plan, cache, config, tmp_path))
    # One copy of the weights on the build host, the cache's (no export, no layer copy): 1x.
    assert "not enough disk space in" in str(error) and "need 1000000.0 TB" in str(error)
    assert hub.requests == []


def test_progress_reports_bytes_per_second(big_repo, hub, cache, config, tmp_path) -> None:
    _, plan = big_repo
    hub.inject(Fault("trickle", path="big.bin", rate=8_000_000, times=-1))
    result = run_fetch(plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("progress: ")]
    assert progress and "/s now" in progress[0] and "/s average" in progress[0]
    assert "fetched big.bin from builder-test/big@" in result.stdout


def test_ranges_of_one_file_reuse_one_connection(big_repo, hub, cache, tmp_path) -> None:
    _, plan = big_repo
    config = fetch_config(tmp_path, ("local", hub.url), parts=1)
    result = run_fetch(plan, cache, config, tmp_path)
    assert result.returncode == 0, result.stderr
    big = gets(hub, "big.bin")
    assert len(big) == BIG_SIZE // (8 * 1024 * 1024)
    assert len({r.peer for r in big}) == 1, "every range opened a new connection"


def test_an_unreadable_retry_after_backs_off_as_usual() -> None:
    from builder.fetch.failures import retry_after as _retry_after

    assert _retry_after("2") == 2.0
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
