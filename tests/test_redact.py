"""Every secret the builder knows stays out of what it prints and records.

Sentinel secrets (the Hub token, a mirror's userinfo, a proxy's and a registry's password, a pip
index's credentials) are sent down each failure path: an unreachable mirror, a 401, a 404, a
hash mismatch, a registry that refuses. None may appear on stdout or stderr, in the lines the
weights stage prints (the build log the host echoes) or in a ledger row. The build itself, end to
end through dockerd, is in test_docker_redact.py."""

from __future__ import annotations

import base64
import copy
import json
import os
import sqlite3
from pathlib import Path

import pytest

from builder.fetch import Attempt
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.redact import SECRETS, Redactor, redact_url, remember
from builder.weights import weights_plan
from tests.conftest import make_project, run_builder, write_config
from tests.localhub import Fault, LocalHub
from tests.test_fetch import attempts_of, error_of, fetch_config, run_fetch

MIRROR_PASSWORD = "mirror-pw-SENTINEL-4e1b"
TOKEN = "hf_SENTINELtoken0123456789abcdefghijkl"
REGISTRY_PASSWORD = "registry-pw-SENTINEL-77c2"
PIP_PASSWORD = "pip-pw-SENTINEL-a9d0"
SENTINELS = (MIRROR_PASSWORD, TOKEN, REGISTRY_PASSWORD, PIP_PASSWORD, "SENTINEL")


def with_credentials(url: str, password: str = MIRROR_PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://builder:{password}@{rest}"


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert "SENTINEL" not in text, text[-3000:]


@pytest.fixture(autouse=True)
def _clean_hub(hub: LocalHub):
    hub.clear_faults()
    hub.state.valid_tokens = None
    yield
    hub.clear_faults()
    hub.state.valid_tokens = None


@pytest.fixture
def plan(demo_manifest_data) -> dict:
    return weights_plan(Manifest.model_validate(demo_manifest_data)).to_json()


def _plan_with(demo_manifest_data, change) -> dict:
    data = copy.deepcopy(demo_manifest_data)
    change(data["sources"][0])
    return weights_plan(Manifest.model_validate(data)).to_json()


# -- the redactor ---------------------------------------------------------------------------------
def test_what_it_was_told_and_what_looks_like_a_credential_is_masked() -> None:
    redact = Redactor([MIRROR_PASSWORD])
    text = (f"{MIRROR_PASSWORD} https://bob:other-pw@m.example/x?token=abc&revision=main "
            f"Authorization: Bearer sometoken {TOKEN} https://cdn.example/f?X-Amz-Signature=deadbeef&a=1")
    out = redact(text)
    assert_clean(out)
    for leaked in ("other-pw", "token=abc", "sometoken", "deadbeef"):
        assert leaked not in out
    assert "revision=main" in out and "a=1" in out and "https://***@m.example/x" in out


def test_a_url_is_shown_without_its_credentials() -> None:
    assert redact_url(f"https://builder:{MIRROR_PASSWORD}@mirror.internal") == "https://***@mirror.internal"
    assert redact_url("https://mirror.internal/hf?access_token=abc") == "https://mirror.internal/hf?access_token=***"
    assert redact_url("https://huggingface.co") == "https://huggingface.co"


def test_a_percent_encoded_password_is_masked_in_both_spellings() -> None:
    redact = Redactor()
    redact.add_url("https://u:p%40ss%2Fword-SENTINEL@h.example/")
    assert_clean(redact("p@ss/word-SENTINEL and p%40ss%2Fword-SENTINEL"))


def test_pip_index_credentials_are_known_from_the_pip_conf(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = https://pypi:{PIP_PASSWORD}@pypi.internal/simple\n"
                    f"extra-index-url =\n    https://__token__:{PIP_PASSWORD}x@extra.internal/simple\n")
    redact = Redactor()
    redact.add_pip_conf(conf)
    # pip itself prints an index without its scheme in some messages: the password alone must go
    assert_clean(redact(f"pypi:{PIP_PASSWORD}@pypi.internal and {PIP_PASSWORD}x"))


def test_ledger_rows_carry_no_secret(tmp_path: Path) -> None:
    remember(MIRROR_PASSWORD)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    error = f"cannot fetch README.md via dead (http://builder:{MIRROR_PASSWORD}@127.0.0.1:9): ConnectError"
    ledger.record_attempts([Attempt("demo", "org/repo", "a" * 40, "README.md", "dead", 0, 0.1, "failed", error)], "b1")
    ledger.start_build("b1", "demo", "1.0.0", "sha256:" + "0" * 64, "0.1.0", None)
    ledger.finish_build("b1", "failed", error=f"demo: {error}")
    ledger.record_deployment("demo", "1.0.0", "sha256:" + "1" * 64, "pod:x", "failed", None,
                             f"token {MIRROR_PASSWORD} refused", 1.0, forced_reason=None)
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = "\n".join(str(row) for table in tables for row in db.execute(f"SELECT * FROM {table}"))  # noqa: S608
    assert "ConnectError" in dump and "refused" in dump  # the rows are there, less the secret
    assert_clean(dump)


# -- the fetch: every line it prints ends up in the build log and the ledger ------------------------
def test_a_mirror_with_credentials_in_its_url_serves_and_stays_unprinted(plan, hub, tmp_path) -> None:
    config = fetch_config(tmp_path, ("private", with_credentials(hub.url)))
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout, result.stderr)


def test_unreachable_mirror(plan, hub, tmp_path) -> None:
    config = fetch_config(tmp_path, ("dead", with_credentials("http://127.0.0.1:9")), attempts=2)
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path, token=TOKEN)
    error = error_of(result)
    assert "via dead (http://***@127.0.0.1:9)" in str(error), str(error)
    assert_clean(result.stdout, result.stderr)


def test_401(plan, hub, tmp_path) -> None:
    hub.state.valid_tokens = {"hf_another_token"}
    config = fetch_config(tmp_path, ("private", with_credentials(hub.url)))
    hub.inject(Fault("status", path="README.md", method=None, times=-1, status=401))
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path, token=TOKEN)
    assert "refused the token (401)" in str(error_of(result))
    assert_clean(result.stdout, result.stderr)


def test_404(demo_manifest_data, hub, tmp_path) -> None:
    config = fetch_config(tmp_path, ("private", with_credentials(hub.url)))
    plan = _plan_with(demo_manifest_data, lambda s: s["artifacts"][0].update(path="MISSING.md"))
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path, token=TOKEN)
    assert "MISSING.md not found" in str(error_of(result))
    assert_clean(result.stdout, result.stderr)


def test_hash_mismatch_after_a_dead_mirror(demo_manifest_data, hub, tmp_path) -> None:
    config = fetch_config(tmp_path, ("dead", with_credentials("http://127.0.0.1:9")),
                          ("private", with_credentials(hub.url)), attempts=2)
    plan = _plan_with(demo_manifest_data, lambda s: s["artifacts"][7].update(sha256="e" * 64))
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path, token=TOKEN)
    error = error_of(result)
    assert type(error).__name__ == "DownloadError" and "all 2 mirrors failed" in str(error), str(error)
    assert {a.outcome for a in attempts_of(result)} >= {"failed"}
    assert_clean(result.stdout, result.stderr)


def test_a_proxy_password_in_the_environment(plan, tmp_path) -> None:
    proxy = f"http://proxyuser:{MIRROR_PASSWORD}@127.0.0.1:9"
    config = fetch_config(tmp_path, ("direct", "http://127.0.0.1:9"), attempts=2)
    result = run_fetch(plan, tmp_path / "cache", config, tmp_path,
                       env={"HTTP_PROXY": proxy, "http_proxy": None, "NO_PROXY": None, "no_proxy": None})
    error_of(result)
    assert_clean(result.stdout, result.stderr)


# -- the CLI: every line on stdout and stderr -----------------------------------------------------
def _cli_env(isolated_env: dict, tmp_path: Path, *mirrors: tuple[str, str]) -> dict:
    config = write_config(tmp_path / "builder.yaml", *mirrors,
                          fetch={"attempts": 2, "backoff_base": 0.05, "backoff_max": 0.2, "connect_timeout": 2})
    return {**isolated_env, "BUILDER_CONFIG": str(config), "HF_TOKEN": TOKEN}


@pytest.mark.parametrize("debug", ["0", "1"])
def test_lock_against_an_unreachable_mirror(isolated_env, tmp_path, demo_manifest_data, debug) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["revision"] = "main"
    project = make_project(tmp_path, data)
    env = {**_cli_env(isolated_env, tmp_path, ("dead", with_credentials("http://127.0.0.1:9"))), "BUILDER_DEBUG": debug}
    result = run_builder(["--root", str(project.root), "lock", "demo"], env, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot resolve builder-demo/tiny-sd@main: "
                                                              "cannot reach the Hub at dead http://***@127.0.0.1:9")
    assert_clean(result.stdout, result.stderr)


def test_an_unapproved_endpoint_with_credentials(isolated_env, tmp_path, hub) -> None:
    env = _cli_env(isolated_env, tmp_path, ("private", with_credentials(hub.url)))
    env["HF_ENDPOINT"] = with_credentials("https://elsewhere.example")
    result = run_builder(["lock", "demo", "--check"], env, timeout=300)
    assert result.returncode == 2 and "is not an approved mirror" in result.stderr
    assert "https://***@elsewhere.example" in result.stderr
    assert_clean(result.stdout, result.stderr)


def test_a_registry_that_refuses(isolated_env, tmp_path, hub) -> None:
    """A registry password from the Docker client's config (where `docker login` writes it),
    sent to something that is not a registry."""
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    host = hub.url.removeprefix("http://")
    auth = base64.b64encode(f"builder:{REGISTRY_PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = {**_cli_env(isolated_env, tmp_path, ("local", hub.url)), "DOCKER_CONFIG": str(docker_config),
           "DOCKER_HOST": "unix:///nonexistent.sock"}
    result = run_builder(["build", "demo", "--registry", host], env, timeout=300)
    assert result.returncode == 1 and "is --registry a container registry?" in result.stderr, result.stderr
    assert_clean(result.stdout, result.stderr)


def test_the_process_wide_redactor_learns_the_environment() -> None:
    before = os.environ.get("HTTPS_PROXY")
    os.environ["HTTPS_PROXY"] = f"http://u:{MIRROR_PASSWORD}-env@proxy.internal:3128"
    try:
        SECRETS.add_environment()
    finally:
        if before is None:
            del os.environ["HTTPS_PROXY"]
        else:
            os.environ["HTTPS_PROXY"] = before
    assert_clean(SECRETS(f"proxy said no to {MIRROR_PASSWORD}-env"))
