"""Every stand-in builds on the local CPU base (--base-image) into an image whose smoke passes:
FluxPipeline, ZImagePipeline, a transformers causal LM and a transformers encoder, and the
custom-local InstantID and MuseTalk loaders (their smoke reads files shipped under server/)."""

from __future__ import annotations

import pytest

from tests.conftest import BASE_IMAGE
from tests.test_docker_build import build, result_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]


@pytest.mark.parametrize(("name", "device_dtype", "output"), [
    ("tiny-flux", "bfloat16", "png_bytes"),
    ("tiny-z-image", "bfloat16", "png_bytes"),
    ("tiny-qwen3", "bfloat16", None),
    ("tiny-bert", "float32", None),
    ("tiny-instantid", "float32", "png_bytes"),  # float16 on the GPU; the CPU falls back to float32
    ("tiny-musetalk", "float32", "mp4_bytes"),
])
def test_stand_in_builds_and_passes_its_smoke_on_cpu(name: str, device_dtype: str, output: str | None,
                                                     isolated_env: dict) -> None:
    result = result_of(build(None, name, isolated_env, "--no-push", "--base-image", BASE_IMAGE))
    smoke = result["smoke"]
    assert smoke["passed"] and smoke["device"] == "cpu" and smoke["dtype"] == device_dtype
    assert smoke["reason"] is None and smoke["inference_seconds"] > 0
    if output:
        assert smoke[output] > 0
    assert result["tag"] == f"{name}:1.0.0"
