"""XTTS-v2 for real, on its CPU stand-in: a tiny random-weight checkpoint made by coqui-tts's own
classes (tests/fixtures/tiny_xtts.py) is fetched from the loopback Hub, verified, baked into an
image on the local audio base (torch 2.9.1, torchaudio, coqui-tts 0.28.0), smoke-tested inside
it, and then served: /v1/predict speaks a WAV in the voice of a clip, splits long text into
sentences, and refuses bad input with a 422 from the real loader.

The stand-in never stops a sentence early (tests/fixtures/tiny_xtts.py), so every sentence lasts
the same, and the length of a reply tells how many sentences were spoken."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import wave
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from server.custom.xtts import split_text
from server.media import encode_wav
from tests.conftest import AUDIO_BASE_IMAGE, ROOT, free_port, wait_for, write_config
from tests.fixtures.media import voiced_speech
from tests.test_docker_build import DOCKER, build, docker_out, result_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready", "audio_ready")]

SPEECH = (ROOT / "server" / "assets" / "smoke" / "speech.wav").read_bytes()
SILENCE = encode_wav(np.zeros(16000 * 3, dtype=np.float32), 16000)
SHORT = encode_wav(voiced_speech(1.0, 16000), 16000)
RATE = 24000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def module_env(tmp_path_factory, hub) -> dict:
    """As conftest's isolated_env, once for the module: one build serves every test here."""
    tmp = tmp_path_factory.mktemp("xtts-env")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "BUILDER_REGISTRY", "HF_ENDPOINT")}
    config = write_config(tmp / "builder.yaml", ("local", hub.url), fetch={"progress_seconds": 2})
    env.update({"BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(tmp / "ledger.sqlite3"),
                "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    return env


@pytest.fixture(scope="module")
def built(tiny_xtts, module_env: dict) -> dict:
    return result_of(build(None, "tiny-xtts", module_env, "--no-push", "--base-image", AUDIO_BASE_IMAGE))


@pytest.fixture(scope="module")
def served(built: dict) -> Iterator[str]:
    port = free_port()
    # Every sentence of the stand-in costs the same whatever its length, which the server's
    # per-character estimate of a request's time cannot know: room enough that it refuses nothing.
    container = docker_out("run", "-d", "--rm", "--network", "host", "-e", f"PORT={port}",
                           "-e", "BUILDER_REQUEST_TIMEOUT=900", built["tag"]).strip()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 200, 300, "the XTTS image's /ready",
                 lambda: None if container in docker_out("ps", "-q", "--no-trunc") else "the container exited")
        yield url
    finally:
        subprocess.run([DOCKER, "rm", "-f", container], capture_output=True)


def speak(url: str, **body) -> requests.Response:
    request = {"text": "Hello there, this is a test.", "language": "en", "speaker_wav": b64(SPEECH), "seed": 1, **body}
    return requests.post(f"{url}/v1/predict", json=request, headers={"Accept": "audio/wav"}, timeout=600)


def samples_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float32) / 32768


def test_the_stand_in_builds_and_its_smoke_passes_in_docker(built: dict) -> None:
    smoke = built["smoke"]
    assert smoke["passed"] and smoke["reason"] is None, smoke
    assert (smoke["device"], smoke["dtype"]) == ("cpu", "float32")
    assert 1.0 <= smoke["audio_seconds"] <= 20.0 and smoke["wav_bytes"] > 44
    assert built["tag"] == "tiny-xtts:1.0.0"


def test_predict_speaks_a_wav_in_the_voice_of_a_clip(served: str) -> None:
    audio = samples_of(speak(served))
    assert np.isfinite(audio).all() and float(np.sqrt(np.mean(audio ** 2))) > 1e-2
    assert 1.0 <= audio.size / RATE <= 20.0
    assert np.array_equal(samples_of(speak(served)), audio)  # the seed decides the sampled speech
    assert not np.array_equal(samples_of(speak(served, seed=2)), audio)


def test_long_text_is_spoken_sentence_by_sentence(served: str) -> None:
    """Over 400 tokens at once would stop XTTS's GPT; split, each piece is one sentence's length."""
    sentence = "This sentence is here to make the text too long for one pass of the model"
    text = " ".join(f"{sentence}, part {word}." for word in ("one", "two", "three", "four", "five", "six", "seven"))
    pieces = split_text(text, 250)
    assert len(text) > 500 and len(pieces) == 4  # two sentences a piece: a third passes 250 characters
    one = samples_of(speak(served, text=pieces[0])).size
    assert samples_of(speak(served, text=text)).size == len(pieces) * one


@pytest.mark.parametrize(("body", "detail"), [
    ({"language": "ja"}, "language: 'ja' is not one this model speaks"),  # in config.json, not served
    ({"speaker_wav": b64(SILENCE)}, "speaker_wav: the clip is silent"),
    ({"speaker_wav": b64(SHORT)}, "speaker_wav: 1.00 s of audio; between 2 and 30 s needed"),
    ({"text": " \n "}, "text: nothing to say"),
])
def test_bad_input_is_a_422_from_the_real_loader(served: str, body: dict, detail: str) -> None:
    response = speak(served, **body)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text
