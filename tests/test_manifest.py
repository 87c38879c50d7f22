"""The manifest: every rule, with the message a user sees (file, line, field, what to do)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from builder.errors import ManifestError
from builder.manifest import Manifest, json_schema, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parent.parent


def problem_of(data: dict) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(yaml.safe_dump(data, sort_keys=False), "m.yaml")
    return str(info.value)


def with_change(base: dict, path: str, value) -> dict:
    """A copy of base with the dotted/indexed path set to value (None deletes a key)."""
    data = copy.deepcopy(base)
    node = data
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()


def test_every_committed_manifest_is_valid() -> None:
    paths = sorted((ROOT / "manifests").glob("*.yaml"))
    assert paths, "no manifests committed"
    for path in paths:
        manifest = load_manifest(path)
        assert manifest.name == path.stem


def test_demo_is_locked_and_its_digest_is_stable(demo_manifest_data: dict) -> None:
    first = Manifest.model_validate(demo_manifest_data)
    second = Manifest.model_validate(copy.deepcopy(demo_manifest_data))
    assert first.locked
    assert first.digest == second.digest and first.digest.startswith("sha256:")
    bumped = Manifest.model_validate(with_change(demo_manifest_data, "version", "0.1.1"))
    assert bumped.digest != first.digest


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("sources[0].artifacts[2].sha256", "abc", "sources[0].artifacts[2].sha256: expected 64 lowercase hex characters"),
        ("sources[0].artifacts[2].sha256", "A" * 64, "sources[0].artifacts[2].sha256: expected 64 lowercase hex"),
        ("sources[0].revision", "ab cd", "sources[0].revision: expected a 40-hex commit id"),
        ("sources[0].artifacts[0].path", "/etc/passwd", "sources[0].artifacts[0].path: must be relative to the model directory"),
        ("sources[0].artifacts[0].path", "../../etc/passwd", "sources[0].artifacts[0].path: must stay inside the model directory"),
        ("sources[0].artifacts[0].path", "unet/../../x", "must stay inside the model directory"),
        ("sources[0].artifacts[0].path", "unet\\model.bin", "sources[0].artifacts[0].path: use forward slashes"),
        ("sources[0].artifacts[0].path", "unet//model.bin", "must not contain empty or '.' path segments"),
        ("sources[0].target", "../elsewhere", "sources[0].target: must stay inside the model directory"),
        ("sources[0].artifacts[0].size", -1, "sources[0].artifacts[0].size: Input should be greater than or equal to 0"),
        ("version", "latest", "version: 'latest' is a moving tag"),
        ("version", "1.0 beta", "version: expected an image tag"),
        ("version", ".hidden", "version: expected an image tag"),
        ("name", "Demo", "name: expected lowercase letters"),
        ("runtime.packages[0]", "torch>=2", "runtime.packages[0]: expected an exact pin such as diffusers==0.42.1"),
        ("runtime.packages[0]", "foo$(touch /tmp/pwned)==1", "runtime.packages[0]: expected an exact pin"),
        ("runtime.system_packages", ["ffmpeg; rm -rf /"], "runtime.system_packages[0]: expected a Debian package name"),
        ("runtime.base_image", "UPPER/case", "runtime.base_image: expected an image reference"),
        ("runtime.python", "3", "runtime.python: expected a Python version"),
        ("profile", "fast", "profile: expected one of"),
        ("task", "dreaming", "task: expected one of"),
        ("sources[0].provider", "replicate", "violates its terms of service"),
        ("description", "two\nlines", "description: must be a single line"),
        ("smoke_test.max_seconds", 0, "smoke_test.max_seconds: Input should be greater than 0"),
        ("smoke_test.expect", {"kind": "video"}, "smoke_test.expect"),
        ("license.approval", {"approved_by": "legal"}, "license.approval.approved_on: required field is missing"),
        ("entrypoint.class_name", None, "entrypoint: loader diffusers needs class_name"),
        ("entrypoint", {"loader": "custom", "function": "server.custom:load"},
         "(top level): profile hf-diffusers-standard needs entrypoint.loader diffusers, not custom"),
        ("entrypoint.function", "no colon", "entrypoint.function: expected module.path:function"),
        ("sources[0].artifacts", [], "sources[0]: list artifacts, or include patterns for `builder lock` to expand"),
        ("name", _DELETE, "name: required field is missing"),
        ("smoke_test.expect", {"kind": "text"}, "task text-to-image produces image"),
        ("entrypoint.options", {"face_analysis": "insightface"}, "entrypoint: options are read only by the custom loader"),
        ("smoke_test.files", {"face_image": "../outside.jpg"}, "smoke_test.files.face_image: must stay inside"),
        ("smoke_test.files", {"not-a-field": "assets/x.jpg"}, "smoke_test.files.not-a-field: expected a request field name"),
        ("sources[0].repo_type", "collection", "sources[0].repo_type: expected one of"),
    ],
)
def test_each_rule_names_the_field(demo_manifest_data: dict, path: str, value, expected: str) -> None:
    message = problem_of(with_change(demo_manifest_data, path, value))
    assert message.startswith("m.yaml:"), message
    assert expected in message, message


def test_unknown_fields_are_refused_with_their_name(demo_manifest_data: dict) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["runtime"]["pakages"] = []
    assert "runtime.pakages: unknown field" in problem_of(data)


def test_two_artifacts_landing_on_one_path_are_refused(demo_manifest_data: dict) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"].append(copy.deepcopy(data["sources"][0]))
    assert "sources[1].artifacts[0] lands on README.md, as sources[0].artifacts[0] does" in problem_of(data)


def test_errors_carry_the_yaml_line(demo_manifest_data: dict) -> None:
    text = (ROOT / "manifests" / "demo.yaml").read_text()
    broken = text.replace("revision: abaa7aa9b35fd02bf64efe884bc3f8ed67316a6f", "revision: not a commit")
    line = next(i for i, row in enumerate(broken.splitlines(), 1) if "revision: not a commit" in row)
    with pytest.raises(ManifestError) as info:
        parse_manifest(broken, "manifests/demo.yaml")
    assert str(info.value).startswith(f"manifests/demo.yaml:{line}: sources[0].revision:")


def test_all_problems_are_listed_and_the_message_counts_them(demo_manifest_data: dict) -> None:
    data = with_change(with_change(demo_manifest_data, "version", "latest"), "name", "BAD")
    with pytest.raises(ManifestError) as info:
        parse_manifest(yaml.safe_dump(data), "m.yaml")
    assert len(info.value.problems) == 2
    assert "(and 1 more" in str(info.value)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ManifestError, match=r"m.yaml: line 2: duplicate key 'name'"):
        parse_manifest("name: a\nname: b\n", "m.yaml")


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(ManifestError, match=r"m.yaml:2: not valid YAML"):
        parse_manifest("name: a\n  version: [\n", "m.yaml")


def test_a_non_mapping_document_is_refused() -> None:
    with pytest.raises(ManifestError, match="expected a mapping"):
        parse_manifest("- just\n- a list\n", "m.yaml")


def test_file_name_and_manifest_name_must_agree(tmp_path: Path, demo_manifest_data: dict) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(demo_manifest_data))
    with pytest.raises(ManifestError, match=r"name: is 'demo' but the file is other.yaml"):
        load_manifest(path)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "nope.yaml")


def test_unlocked_manifest_validates_but_reports_what_is_unpinned(demo_manifest_data: dict) -> None:
    data = with_change(with_change(demo_manifest_data, "sources[0].revision", "main"), "sources[0].artifacts[1].sha256", None)
    manifest = Manifest.model_validate(data)
    assert not manifest.locked
    assert manifest.unlocked_items() == ["sources[0].revision 'main'", "model_index.json"]


def test_manifests_are_frozen(demo_manifest_data: dict) -> None:
    manifest = Manifest.model_validate(demo_manifest_data)
    with pytest.raises(Exception):
        manifest.version = "9"  # type: ignore[misc]


def test_committed_schema_matches_the_model() -> None:
    committed = (ROOT / "manifests" / "manifest.schema.json").read_text()
    assert committed == json_schema(), "run `python -m builder schema --write` and commit the result"


def test_every_schema_field_has_a_description() -> None:
    schema = json.loads(json_schema())
    missing = []
    for name, definition in {"Manifest": schema, **schema["$defs"]}.items():
        for field, spec in definition.get("properties", {}).items():
            if "description" not in spec:
                missing.append(f"{name}.{field}")
    assert missing == []


@pytest.mark.parametrize(("task", "expect", "message"), [
    ("text-to-speech", {"kind": "image", "width": 64, "height": 64}, "task text-to-speech produces audio"),
    ("lip-sync", {"kind": "audio", "sample_rate": 24000, "min_seconds": 1, "max_seconds": 2}, "task lip-sync produces video"),
    ("identity-to-image", {"kind": "video", "frames": 3, "width": 64, "height": 64}, "task identity-to-image produces image"),
    ("text-to-speech", {"kind": "audio", "sample_rate": 24000, "min_seconds": 3, "max_seconds": 2},
     "smoke_test.expect: min_seconds is more than max_seconds"),
    ("text-to-speech", {"kind": "audio", "sample_rate": 100, "min_seconds": 1, "max_seconds": 2},
     "smoke_test.expect.sample_rate: Input should be greater than or equal to 8000"),
])
def test_the_custom_tasks_expect_their_kind_of_output(demo_manifest_data: dict, task: str, expect: dict, message: str) -> None:
    data = with_change(with_change(demo_manifest_data, "task", task), "smoke_test.expect", expect)
    assert message in problem_of(data)


# -- serving (issue 12) ---------------------------------------------------------------------------
def _with_serving(data: dict, serving: dict) -> dict:
    import copy as _copy

    changed = _copy.deepcopy(data)
    changed["serving"] = serving
    return changed


@pytest.mark.parametrize("serving, problem", [
    ({"request": {"colour": {"default": 1}}}, "serving: 'colour' is not a request field of text-to-image"),
    ({"unsupported": ["prompt"]}, "'prompt' is required by text-to-image: it cannot be unsupported"),
    ({"unsupported": ["seed"], "request": {"seed": {"default": 1}}}, "'seed' is both given a policy and unsupported"),
    ({"request": {"num_inference_steps": {"min": 10, "max": 5}}}, "min 10 is above max 5"),
    ({"request": {"num_inference_steps": {"default": 50, "max": 20}}}, "default 50 is outside [None, 20.0]"),
    ({"request": {"num_inference_steps": {"max": 1}}}, "smoke_test.inputs.num_inference_steps: 2 is outside"),
    ({"unsupported": ["negative_prompt"]}, "smoke_test.inputs.negative_prompt: serving.unsupported lists it"),
    ({"true_cfg_scale": 4.0, "unsupported": ["negative_prompt"]}, "serving.true_cfg_scale: only for a task"),
    ({"memory": {"offload": "half"}}, "serving.memory.offload"),
])
def test_serving_is_checked_against_the_task_and_the_smoke(demo_manifest_data: dict, serving: dict, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(yaml.safe_dump(_with_serving(demo_manifest_data, serving)), "demo.yaml")
    assert problem in " ".join(caught.value.problems or (str(caught.value),))


def test_a_manifest_without_serving_keeps_its_digest(demo_manifest_data: dict) -> None:
    plain = parse_manifest(yaml.safe_dump(demo_manifest_data), "demo.yaml")
    explicit = parse_manifest(yaml.safe_dump(_with_serving(demo_manifest_data, {"memory": {"offload": "auto"}})), "demo.yaml")
    assert plain.digest == explicit.digest  # the defaults spelled out are the defaults
    tightened = parse_manifest(yaml.safe_dump(_with_serving(demo_manifest_data, {"memory": {"min_gpu_memory_gb": 8}})),
                               "demo.yaml")
    assert tightened.digest != plain.digest


def test_a_policy_outside_the_servers_hard_limits_fails_at_validation(demo_manifest_data: dict) -> None:
    """Bounds that leave no value inside the server's limits fail here, not when the image loads."""
    serving = {"request": {"num_inference_steps": {"min": 500, "max": 600, "default": 550}}}
    data = _with_serving(demo_manifest_data, serving)
    data["smoke_test"]["inputs"]["num_inference_steps"] = 550
    with pytest.raises(ManifestError) as caught:
        parse_manifest(yaml.safe_dump(data), "demo.yaml")
    assert "serving.request.num_inference_steps" in " ".join(caught.value.problems or (str(caught.value),))
