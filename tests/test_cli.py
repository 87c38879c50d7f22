"""The command line as a user meets it: exit codes, one clear line on stderr, no tracebacks."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, make_project, run_builder


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "BUILDER_REGISTRY")}
    env.update(extra)
    return env


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_validate_all_committed_manifests() -> None:
    result = run_builder(["validate"], _env())
    assert result.returncode == 0, result.stderr
    assert "ok manifests/demo.yaml: demo 0.1.0, hf-diffusers-standard, locked" in result.stdout


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path, demo_manifest_data) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["version"] = "latest"
    data["sources"][0]["artifacts"][1]["path"] = "../escape.json"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_builder(["validate", str(path)], _env())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("version: 'latest' is a moving tag" in line for line in lines)
    assert any("sources[0].artifacts[1].path: must stay inside the model directory" in line for line in lines)
    assert lines[-1] == "error: 1 of 1 manifests are invalid (problems listed above)"


def test_unknown_manifest_name_is_one_line() -> None:
    result = run_builder(["validate", "nosuchmodel"], _env())
    assert result.returncode == 2
    assert "no manifest named 'nosuchmodel'" in _one_error_line(result)


def test_render_prints_the_golden_dockerfile_and_the_weights_plan(tmp_path: Path) -> None:
    result = run_builder(["render", "demo"], _env(BUILDER_WEIGHTS_CACHE=str(tmp_path / "empty-cache")))
    assert result.returncode == 0, result.stderr
    dockerfile, _, plan = result.stdout.partition("# weights layers, added by the builder")
    assert dockerfile == (ROOT / "tests/golden/demo.Dockerfile").read_text()
    lines = plan.splitlines()
    assert lines[0] == " after the marked step (3):"
    unet = "5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4"
    assert f"#   (computed when fetched)       3,964,928 bytes  /opt/weights/sha256/{unet}" in lines
    assert (f"#       sha256 {unet}  /opt/models/demo/unet/diffusion_pytorch_model.safetensors -> "
            f"../../../weights/sha256/{unet}") in lines


def test_render_context_writes_a_buildable_context(tmp_path: Path) -> None:
    result = run_builder(["render", "demo", "--context", str(tmp_path / "ctx")], _env())
    assert result.returncode == 0, result.stderr
    ctx = tmp_path / "ctx"
    assert result.stdout.strip() == str(ctx)
    assert (ctx / "Dockerfile").read_text() == (ROOT / "tests/golden/demo.Dockerfile").read_text()
    # every COPY from the context has its source there, holding what the builder meant to put
    sources = [line.split()[1] for line in (ctx / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert sources == ["server/", "manifest.json"]
    assert all((ctx / source).exists() for source in sources)
    from builder.manifest import load_manifest

    demo = load_manifest(ROOT / "manifests/demo.yaml")
    shipped = json.loads((ctx / "manifest.json").read_text())
    assert (shipped["name"], shipped["version"]) == ("demo", demo.version)
    assert (ctx / "server/app.py").read_bytes() == (ROOT / "server/app.py").read_bytes()
    assert "/opt/weights/sha256/" in (ctx / "weights-layers.txt").read_text()


def test_build_refuses_an_unlocked_manifest_before_touching_docker(tmp_path: Path, demo_manifest_data) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["revision"] = "main"
    data["sources"][0]["artifacts"][0]["sha256"] = None
    project = make_project(tmp_path, data)
    result = run_builder(["--root", str(project.root), "build", "demo", "--no-push"],
                         _env(DOCKER_HOST="unix:///nonexistent.sock"))
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "not locked (2 unpinned: sources[0].revision 'main', README.md)" in line
    assert "run `python -m builder lock demo` or set profile: experimental" in line


def test_build_of_a_gated_model_without_a_token_says_what_to_do(tmp_path: Path, demo_manifest_data) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["gated"] = True
    project = make_project(tmp_path, data)
    result = run_builder(["--root", str(project.root), "build", "demo", "--no-push"],
                         _env(HF_HOME=str(tmp_path / "hf"), DOCKER_HOST="unix:///nonexistent.sock"))
    assert result.returncode == 2
    assert "builder-demo/tiny-sd is gated and no Hub token is set" in _one_error_line(result)


def test_push_without_a_registry_is_bad_input() -> None:
    result = run_builder(["build", "demo"], _env(DOCKER_HOST="unix:///nonexistent.sock"))
    assert result.returncode == 2
    assert "no registry to push to: pass --registry" in _one_error_line(result)


def test_a_malformed_registry_is_bad_input() -> None:
    result = run_builder(["build", "demo", "--registry", "Not A Registry"], _env())
    assert result.returncode == 2
    assert "--registry 'Not A Registry': expected HOST[:PORT][/NAMESPACE]" in _one_error_line(result)


def test_an_unreachable_registry_fails_before_building(tmp_path: Path) -> None:
    result = run_builder(["build", "demo", "--registry", "127.0.0.1:9"],
                         _env(DOCKER_HOST="unix:///nonexistent.sock", BUILDER_LEDGER=str(tmp_path / "l.sqlite3")))
    assert result.returncode == 1
    assert "cannot reach the registry at http://127.0.0.1:9" in _one_error_line(result)
    from builder.ledger import Ledger

    assert Ledger(tmp_path / "l.sqlite3").history("demo") == []  # no build row was even started


def test_no_docker_engine_is_one_line_exit_1() -> None:
    result = run_builder(["build", "demo", "--no-push"], _env(DOCKER_HOST="unix:///nonexistent.sock"))
    assert result.returncode == 1
    assert ("cannot reach the Docker engine at unix:///nonexistent.sock (no socket there): check that dockerd is "
            "running and DOCKER_HOST points at it") in _one_error_line(result)


@pytest.mark.parametrize("service", ["hub-name", "hub-refused", "registry", "runpod", "docker"])
def test_an_unreachable_service_is_one_line_naming_it_and_what_to_check(tmp_path: Path, service: str) -> None:
    """Issue 10: no route to a service is the world's bad input, never `internal error: ConnectError`."""
    config = tmp_path / "builder.yaml"
    env = _env(BUILDER_LEDGER=str(tmp_path / "ledger.sqlite3"), HF_HOME=str(tmp_path / "hf"),
               RUNPOD_API_KEY="test-key", RUNPOD_API_BASE_URL="http://127.0.0.1:9",
               RUNPOD_ENDPOINT_BASE_URL="http://127.0.0.1:9/v2", DOCKER_HOST="tcp://127.0.0.1:9")
    env.pop("HF_ENDPOINT", None)
    if service.startswith("hub"):
        url = "http://no-such-hub.invalid" if service == "hub-name" else "http://127.0.0.1:9"
        config.write_text(f"mirrors:\n  - {{name: org, url: '{url}'}}\n")
        args, env["BUILDER_CONFIG"], env["HF_ENDPOINT"] = ["lock", "flux", "--check"], str(config), url
        expected = [f"cannot reach the Hub at org {url} (", "HF_ENDPOINT", "[tool.builder]"]
    elif service == "registry":
        args = ["promote", "demo", "0.1.0", "--to", "staging", "--registry", "127.0.0.1:9"]
        expected = ["cannot reach the registry at http://127.0.0.1:9 (connection refused)", "--registry"]
    elif service == "runpod":
        args = ["rollback", "demo", "--target", "endpoint:abc123", "--registry", "127.0.0.1:9"]
        expected = ["cannot reach RunPod (to ", "at http://127.0.0.1:9 (connection refused)", "RUNPOD_API_BASE_URL"]
    else:
        args = ["build", "demo", "--no-push"]
        expected = ["cannot reach the Docker engine at tcp://127.0.0.1:9 (connection refused)", "DOCKER_HOST"]
    result = run_builder(args, env, timeout=120)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result)
    assert "internal error" not in line
    for text in expected:
        assert text in line, line
    if service == "hub-name":
        assert "(the name does not resolve)" in line


def test_a_missing_ca_bundle_is_bad_input() -> None:
    result = run_builder(["build", "demo", "--no-push", "--ca-bundle", "/nonexistent/ca.pem"], _env())
    assert result.returncode == 2
    assert "--ca-bundle /nonexistent/ca.pem: no such file" in _one_error_line(result)


def test_bad_flags_are_exit_2_with_one_line() -> None:
    result = run_builder(["build", "demo", "--gpus", "some"], _env())
    assert result.returncode == 2
    assert "Invalid value for '--gpus'" in _one_error_line(result)


def test_schema_check_passes_for_the_committed_schema() -> None:
    result = run_builder(["schema", "--check"], _env())
    assert result.returncode == 0, result.stderr


def test_user_text_that_looks_like_markup_is_printed_as_it_is(tmp_path: Path, demo_manifest_data) -> None:
    """Issue 15: a value holding `[/x]` ended `validate` with `internal error: MarkupError`."""
    data = copy.deepcopy(demo_manifest_data)
    data["version"] = "[/x]"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_builder(["validate", str(path)], _env())
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and "MarkupError" not in result.stderr
    assert "'[/x]'" in result.stderr


def test_a_file_over_the_registrys_largest_layer_fails_validate_and_render_naming_it(tmp_path: Path, demo_manifest_data) -> None:
    data = copy.deepcopy(demo_manifest_data)
    big = next(a for a in data["sources"][0]["artifacts"] if a["path"].endswith(".safetensors"))
    big["size"] = 11_000_000_000
    project = make_project(tmp_path, data)
    env = _env(BUILDER_REGISTRY="ghcr.io/acme", BUILDER_CONFIG=str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    for command in (["validate", "demo"], ["render", "demo"]):
        result = run_builder(["--root", str(project.root), *command], env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert (f"{big['path'].split('/')[-1]} is 11.00 GB, over the registry's largest layer (10.00 GB, "
                "push.max_layer_gb)") in result.stderr
    # A registry without a documented limit takes it; a configured limit applies anywhere.
    ok = run_builder(["--root", str(project.root), "validate", "demo"], _env(BUILDER_REGISTRY="127.0.0.1:5000",
                                                                             BUILDER_CONFIG=str(tmp_path / "none.yaml")))
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "limit.yaml").write_text("push: {max_layer_gb: 5}\n")
    limited = run_builder(["--root", str(project.root), "validate", "demo"], _env(BUILDER_CONFIG=str(tmp_path / "limit.yaml")))
    assert limited.returncode == 2 and "over the registry's largest layer (5.00 GB" in limited.stderr


def test_ledger_text_that_looks_like_markup_is_printed_as_it_is(tmp_path: Path) -> None:
    """Issue 15: the tables of `history` and `stats` read their cells as markup too."""
    from builder.fetch import Attempt
    from builder.ledger import Ledger

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    ledger.start_build("b1", "m", "1.0.0", "sha256:x", "0.1.0", None)
    ledger.finish_build("b1", "failed", error="pip: no match for torch[/x] [bold]")
    ledger.record_attempts([Attempt("m", "ns/r", "a" * 40, "f.bin", "[/mirror]", 10, 1.0, "ok", None)])
    ledger.close()
    env = _env(BUILDER_LEDGER=str(path), COLUMNS="200")
    history = run_builder(["history", "m"], env)
    assert history.returncode == 0, history.stderr
    assert "pip: no match for torch[/x] [bold]" in history.stdout
    stats = run_builder(["stats"], env)
    assert stats.returncode == 0, stats.stderr
    assert "[/mirror]" in stats.stdout
