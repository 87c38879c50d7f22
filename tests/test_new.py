"""`builder new`: manifests drafted from what the loopback Hub says about repositories shaped like
the real ones (tests/fixtures/hub_layouts.py), locked, validated, compared with golden files;
the refusals, one line each; the file rules and the licence table on their own; and, with
Docker, two drafts built and smoke-tested as they were written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from builder.draft.decide import decide
from builder.draft.files import WHY_BIN, WHY_NOT_ROOT, WHY_ORIGINAL, WHY_OTHER_FORMAT, plan_files, why_variant
from builder.draft.hub import HubFile, RepoFacts
from builder.draft.licences import licence_from_card
from builder.errors import InputError
from builder.manifest import load_manifest
from tests.conftest import BASE_IMAGE, ROOT, run_builder, unique_name, write_config
from tests.fixtures import hub_layouts
from tests.localhub import LocalHub

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("BUILDER_UPDATE_GOLDEN") == "1"
TOKEN = "hf_new_test_token"

# name -> (repository, the golden file, exit code, token)
SHAPES = {
    "flux-like": ("builder-test/flux-like", "new-flux.yaml", 0, TOKEN),
    "sd-like": ("builder-test/sd-like", "new-sd.yaml", 0, None),
    "qwen3-chat": ("builder-demo/tiny-qwen3", "new-qwen3.yaml", 0, None),
    "bert-embed": ("builder-demo/tiny-bert", "new-bert.yaml", 0, None),
    "custom-embed": ("builder-test/custom-code", "new-custom.yaml", 3, None),
}


@pytest.fixture(scope="module")
def layouts(hub: LocalHub, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> LocalHub:
    """The loopback Hub with the real-world layouts published beside the tiny models."""
    root = tmp_path_factory.mktemp("layouts")
    hub.publish("builder-test/flux-like", hub_layouts.flux_like(tiny_models["tiny-flux"], root / "flux"),
                gated_tokens={TOKEN})
    hub.publish("builder-test/sd-like", hub_layouts.sd_like(tiny_models["tiny-sd"], root / "sd"))
    hub.publish("builder-test/custom-code", hub_layouts.custom_code(tiny_models["tiny-bert"], root / "custom"))
    space = root / "space"
    (space / "checkpoints").mkdir(parents=True)
    (space / "README.md").write_text("---\ntitle: Demo\nsdk: gradio\nlicense: mit\nmodels:\n- builder-demo/tiny-qwen3\n---\n")
    (space / "app.py").write_text("import gradio\n")
    (space / "requirements.txt").write_text("gradio\n")
    shutil.copy(tiny_models["tiny-bert"] / "model.safetensors", space / "checkpoints" / "model.safetensors")
    hub.publish("builder-test/a-space", space, repo_type="space")
    return hub


def project(tmp_path: Path) -> Path:
    """A project with the real manifests (the drafts copy their runtimes), templates and server."""
    root = tmp_path / "project"
    (root / "manifests").mkdir(parents=True)
    for manifest in (ROOT / "manifests").glob("*.yaml"):
        shutil.copy(manifest, root / "manifests")
    shutil.copytree(ROOT / "templates", root / "templates")
    shutil.copytree(ROOT / "server", root / "server", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def new(root: Path, env: dict, *args: str):
    return run_builder(["--root", str(root), "new", *args], env)


def last_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def golden(name: str, text: str, hub: LocalHub) -> None:
    text = text.replace(hub.url, "http://localhub")  # the loopback port changes from run to run
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed: if intended, rerun with BUILDER_UPDATE_GOLDEN=1 and review the diff"


# -- the drafts --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SHAPES))
def test_each_layout_drafts_a_locked_valid_manifest_matching_its_golden(name: str, tmp_path: Path, layouts: LocalHub,
                                                                        isolated_env: dict) -> None:
    repo, golden_name, code, token = SHAPES[name]
    root = project(tmp_path)
    env = {**isolated_env, "HF_TOKEN": token} if token else isolated_env
    result = new(root, env, name, "--from", repo)
    assert result.returncode == code, result.stderr
    path = root / "manifests" / f"{name}.yaml"
    manifest = load_manifest(path)
    assert manifest.locked
    golden(golden_name, path.read_text(), layouts)
    if code == 0:
        assert f"manifests/{name}.yaml: {manifest.profile}, {manifest.entrypoint.loader}" in result.stdout.splitlines()[0]
        assert f"then: python -m builder build {name}" in result.stdout
    else:
        assert "the draft needs work: 1 part(s) marked TODO(builder new)" in last_line(result)


def test_the_drafts_decide_what_the_layouts_call_for(tmp_path: Path, layouts: LocalHub, isolated_env: dict) -> None:
    """The decisions behind the golden files, stated: one precision, safetensors, folders only."""
    root = project(tmp_path)
    assert new(root, isolated_env, "sd-draft", "--from", "builder-test/sd-like").returncode == 0
    assert new(root, {**isolated_env, "HF_TOKEN": TOKEN}, "flux-draft", "--from", "builder-test/flux-like").returncode == 0
    sd, flux = load_manifest(root / "manifests/sd-draft.yaml"), load_manifest(root / "manifests/flux-draft.yaml")
    sd_files = [a.path for a in sd.sources[0].artifacts]
    assert "unet/diffusion_pytorch_model.safetensors" in sd_files
    assert not [p for p in sd_files if p.endswith((".bin", ".ckpt")) or ".fp16." in p or "/" not in p and p.endswith(".safetensors")]
    assert sd.entrypoint.dtype == "float16" and sd.license.commercial_use and sd.license.approval is None
    flux_files = [a.path for a in flux.sources[0].artifacts]
    assert "transformer/diffusion_pytorch_model.safetensors" in flux_files and "LICENSE.md" in flux_files
    assert not {"flux1-dev.safetensors", "ae.safetensors", "dev_grid.jpg"} & set(flux_files)
    assert flux.sources[0].gated and not flux.license.commercial_use and flux.entrypoint.class_name == "FluxPipeline"
    assert flux.runtime == load_manifest(ROOT / "manifests/flux.yaml").runtime


def test_a_stand_in_draft_pins_what_its_hand_written_manifest_pins(tmp_path: Path, layouts: LocalHub,
                                                                  isolated_env: dict) -> None:
    root = project(tmp_path)
    assert new(root, isolated_env, "qwen", "--from", "builder-demo/tiny-qwen3").returncode == 0
    drafted, written = load_manifest(root / "manifests/qwen.yaml"), load_manifest(ROOT / "manifests/tiny-qwen3.yaml")
    assert drafted.sources[0].revision == written.sources[0].revision
    assert drafted.sources[0].artifacts == written.sources[0].artifacts
    assert (drafted.profile, drafted.task, drafted.entrypoint.class_name, drafted.smoke_test.expect) == (
        written.profile, written.task, written.entrypoint.class_name, written.smoke_test.expect)


def test_dry_run_prints_the_locked_draft_and_writes_nothing(tmp_path: Path, layouts: LocalHub, isolated_env: dict) -> None:
    root = project(tmp_path)
    result = new(root, isolated_env, "sd-like", "--from", "builder-test/sd-like", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "new-sd.yaml").read_text()
    assert not (root / "manifests/sd-like.yaml").exists()
    assert last_line(result).startswith("dry run, nothing written: sd-like: hf-diffusers-standard")


def test_task_and_profile_options_steer_the_draft(tmp_path: Path, layouts: LocalHub, isolated_env: dict) -> None:
    root = project(tmp_path)
    custom = new(root, isolated_env, "bert-custom", "--from", "builder-demo/tiny-bert", "--profile", "custom-local")
    assert custom.returncode == 3, custom.stderr
    data = yaml.safe_load((root / "manifests/bert-custom.yaml").read_text())
    assert data["profile"] == "custom-local" and data["entrypoint"]["function"] == "server.custom.bert_custom:load"
    wrong = new(root, isolated_env, "bert-gen", "--from", "builder-demo/tiny-bert", "--task", "text-generation")
    assert wrong.returncode == 3  # BertModel is no causal LM: not the standard text-generation loader
    assert "config.json's architectures (BertModel) is no causal language model" in last_line(wrong)
    assert yaml.safe_load((root / "manifests/bert-gen.yaml").read_text())["task"] == "text-generation"


def test_a_space_drafts_as_custom_code_and_needs_work(tmp_path: Path, layouts: LocalHub, isolated_env: dict) -> None:
    root = project(tmp_path)
    result = new(root, isolated_env, "a-space", "--from", "builder-test/a-space", "--repo-type", "space")
    assert result.returncode == 3, result.stderr
    manifest = load_manifest(root / "manifests/a-space.yaml")
    assert manifest.sources[0].repo_type == "space" and manifest.profile == "custom-local" and manifest.locked
    assert {a.path for a in manifest.sources[0].artifacts} == {"README.md", "app.py", "requirements.txt",
                                                                "checkpoints/model.safetensors"}
    assert "task: the Hub gives no pipeline tag" in last_line(result)


# -- the refusals: one line, exit 2 (1 when the Hub cannot be reached), nothing written -----------
@pytest.mark.parametrize(("args", "token", "expected"), [
    (["Bad_Name", "--from", "builder-demo/tiny-bert"], None, "error: NAME 'Bad_Name': expected lowercase letters"),
    (["demo", "--from", "builder-demo/tiny-bert"], None, "manifests/demo.yaml exists: choose another NAME"),
    (["x", "--from", "not-a-repo-id"], None, "error: --from 'not-a-repo-id': expected a repository id"),
    (["x", "--from", "builder-test/nope"], None, "error: no model repository builder-test/nope on local (http://localhub)"),
    (["x", "--from", "builder-demo/tiny-bert@v9"], None,
     "error: builder-demo/tiny-bert has no revision 'v9' on local: give a branch, tag or commit listed at "
     "http://localhub/builder-demo/tiny-bert"),
    (["x", "--from", "builder-test/flux-like"], None,
     "error: builder-test/flux-like is gated and no token was passed: accept its licence at "
     "http://localhub/builder-test/flux-like while logged in, then set HF_TOKEN to a token of that account"),
    (["x", "--from", "builder-test/flux-like"], "hf_other_token", "the token passed has no access"),
    (["x", "--from", "builder-test/sd-like", "--profile", "hf-transformers-standard"], None,
     "error: --profile hf-transformers-standard cannot serve builder-test/sd-like: it is a hf-diffusers-standard model"),
], ids=["bad-name", "name-taken", "bad-repo-id", "no-repo", "no-revision", "gated-no-token", "gated-no-access", "profile"])
def test_a_refusal_is_one_line_and_writes_nothing(args: list[str], token: str | None, expected: str, tmp_path: Path,
                                                  layouts: LocalHub, isolated_env: dict) -> None:
    root = project(tmp_path)
    before = sorted(p.name for p in (root / "manifests").iterdir())
    result = new(root, {**isolated_env, "HF_TOKEN": token} if token else isolated_env, *args)
    assert result.returncode == 2, result.stderr
    assert expected in last_line(result).replace(layouts.url, "http://localhub")
    assert sorted(p.name for p in (root / "manifests").iterdir()) == before


def test_an_unreachable_hub_is_one_line_naming_what_to_check(tmp_path: Path, isolated_env: dict) -> None:
    from tests.conftest import free_port

    root = project(tmp_path)
    config = write_config(tmp_path / "dead.yaml", ("dead", f"http://127.0.0.1:{free_port()}"))
    result = new(root, {**isolated_env, "BUILDER_CONFIG": str(config)}, "x", "--from", "builder-demo/tiny-bert")
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("error: cannot look up builder-demo/tiny-bert: cannot reach the Hub at dead http://127.0.0.1:")
    assert "connection refused" in line and "HF_ENDPOINT" in line
    assert not (root / "manifests/x.yaml").exists()


# -- the rules on their own ----------------------------------------------------------------------
def _tree(*paths: str) -> dict[str, HubFile]:
    return {p: HubFile(p, 1000 + i, p.endswith((".safetensors", ".bin"))) for i, p in enumerate(paths)}


def test_transformers_files_keep_the_safetensors_shards_and_name_every_reason() -> None:
    files = _tree("README.md", "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                  "model-00002-of-00002.safetensors", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
                  "pytorch_model-00002-of-00002.bin", "consolidated.safetensors", "onnx/model.onnx", "tf_model.h5",
                  "tokenizer.json", "sample.png")
    plan = plan_files("transformers", files, [])
    assert plan.kept == ("README.md", "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                         "model.safetensors.index.json", "tokenizer.json")
    assert [p.pattern for p in plan.include] == ["README.md", "config.json", "model-*-of-00002.safetensors",
                                                 "model.safetensors.index.json", "tokenizer.json"]
    reasons = dict(plan.left_out)
    assert reasons["pytorch_model-00001-of-00002.bin"] == reasons["pytorch_model.bin.index.json"] == WHY_BIN
    assert reasons["consolidated.safetensors"] == WHY_ORIGINAL and reasons["tf_model.h5"] == WHY_OTHER_FORMAT
    assert reasons["onnx/model.onnx"] == WHY_NOT_ROOT and not plan.problems


def test_a_folder_with_only_variant_weights_is_a_problem_not_a_silent_failure() -> None:
    files = _tree("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
                  "unet/diffusion_pytorch_model.fp16.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                  "vae/diffusion_pytorch_model.fp16.safetensors")
    plan = plan_files("diffusers", files, ["unet", "vae"])
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in plan.kept
    assert dict(plan.left_out)["vae/diffusion_pytorch_model.fp16.safetensors"] == why_variant("fp16")
    assert plan.problems == ("unet has only fp16 variant weights, which the loader does not read without variant "
                             "support: convert them, or add `variant` to the manifest and the server's loader",)
    # the patterns still say exactly that: unet's fp16 kept, vae's fp16 excluded
    assert [p.pattern for p in plan.exclude] == ["*.fp16.bin", "vae/*.fp16.safetensors"]
    missing = plan_files("diffusers", files, ["unet", "vae", "safety_checker"])
    assert missing.problems[-1] == ("model_index.json names safety_checker, but the repository has no safety_checker/ "
                                    "folder: the pipeline will not load")


@pytest.mark.parametrize(("card", "name", "commercial"), [
    ({"license": "apache-2.0"}, "Apache License 2.0", True),
    ({"license": "openrail++"}, "CreativeML Open RAIL++-M", True),
    ({"license": "cc-by-nc-sa-4.0"}, "Creative Commons CC-BY-NC-SA-4.0", False),
    ({"license": "other", "license_name": "flux-1-dev-non-commercial-license"}, "FLUX.1 [dev] Non-Commercial License", False),
    ({"license": "llama3.1"}, "llama3.1", False),  # not in the table: no commercial use until someone decides
    ({"license": "other", "license_name": "acme-model-licence"}, "acme-model-licence", False),
    ({"license": ["mit", "cc-by-nc-4.0"]}, "MIT License; Creative Commons CC-BY-NC-4.0", False),
])
def test_the_licence_table(card: dict, name: str, commercial: bool) -> None:
    licence = licence_from_card(card)
    assert licence is not None and (licence.name, licence.commercial_use) == (name, commercial)
    if card["license"] == "llama3.1":
        assert "until someone reads it and decides" in licence.note


def test_a_card_without_a_licence_gives_none() -> None:
    assert licence_from_card({"pipeline_tag": "text-to-image"}) is None


def _facts(**configs: dict) -> RepoFacts:
    return RepoFacts("org/m", "model", "main", "0" * 40, "hub", "https://huggingface.co/org/m", False, {}, None, None,
                     _tree("config.json", "model.safetensors"), {"config.json": configs.get("config", {})})


def test_decisions_without_a_pipeline_tag_are_marked_todo_and_profiles_that_cannot_fit_are_refused() -> None:
    facts = _facts(config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    model = decide(facts, "m", None, None)
    assert (model.profile.value, model.task.value, model.target.value) == (
        "hf-transformers-standard", "text-generation", "AutoModelForCausalLM")
    assert model.todo == ("task: the Hub gives no pipeline tag; text-generation is a guess: check it, or draft again "
                          "with --task",)
    assert decide(facts, "m", "text-generation", None).todo == ()
    with pytest.raises(InputError, match="--profile hf-diffusers-standard cannot serve org/m: it is a "
                                         "hf-transformers-standard model"):
        decide(facts, "m", "text-generation", "hf-diffusers-standard")


# -- Docker: two drafts build and pass their smoke as written ---------------------------------------
@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_diffusers_and_transformers_drafts_build_and_pass_their_smoke(tmp_path: Path, layouts: LocalHub,
                                                                      isolated_env: dict) -> None:
    from tests.test_docker_build import build, result_of

    root = project(tmp_path)
    for repo, expected_dtype in (("builder-test/sd-like", "float32"), ("builder-demo/tiny-qwen3", "float32")):
        name = unique_name("new")
        assert new(root, isolated_env, name, "--from", repo).returncode == 0
        result = result_of(build(root, name, isolated_env, "--no-push", "--base-image", BASE_IMAGE))
        smoke = result["smoke"]
        assert smoke["passed"] and smoke["device"] == "cpu" and smoke["dtype"] == expected_dtype, smoke
        assert result["tag"] == f"{name}:1.0.0"


def test_a_token_the_hub_refuses_is_named(tmp_path: Path, layouts: LocalHub, isolated_env: dict) -> None:
    root = project(tmp_path)
    layouts.state.valid_tokens = {TOKEN}
    try:
        result = new(root, {**isolated_env, "HF_TOKEN": "hf_revoked"}, "x", "--from", "builder-demo/tiny-bert")
    finally:
        layouts.state.valid_tokens = None
    assert result.returncode == 2
    assert last_line(result) == "error: local refused the token (HTTP 401): check HF_TOKEN, or unset it"
