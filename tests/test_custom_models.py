"""The custom models over real HTTP (uvicorn in a subprocess): InstantID and MuseTalk run their
tiny random-weight stand-ins through the real loaders; XTTS, whose runtime (coqui-tts) cannot
load beside this environment's torch, is tested here through its layout checks, request
validation and text splitting, in front of a rigged voice (tests/fixtures/rigged.py), and for
real in Docker on the audio base (tests/test_docker_xtts.py)."""

from __future__ import annotations

import base64
import copy
import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from server.errors import InputError, LoadError
from tests.conftest import ROOT
from tests.fixtures import rigged
from tests.fixtures.media import voiced_speech
from tests.test_server import _manifest, run_smoke, serve, write_manifest_json

ASSETS = ROOT / "server" / "assets" / "smoke"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int) -> bytes:
    from server.media import encode_wav

    return encode_wav(samples, rate)


NO_FACE = png(np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3)))  # a grey ramp
FACE = (ASSETS / "face.jpg").read_bytes()
SPEECH = (ASSETS / "speech.wav").read_bytes()


def model_dir(tmp_path: Path, tiny_models: dict[str, Path], manifest: dict) -> Path:
    """The image's model folder: each tiny source's files under its target, as the build lays them out."""
    root = tmp_path / "model"
    root.mkdir()
    for source in manifest["sources"]:
        name = source["repo_id"].split("/")[1]
        (root / source["target"]).symlink_to(tiny_models[name])
    return root


def _stand_in_server(tmp_path_factory, tiny_models: dict[str, Path], name: str):
    tmp = tmp_path_factory.mktemp(name)
    data = _manifest(name)
    return serve(write_manifest_json(tmp, data), model_dir(tmp, tiny_models, data))


@pytest.fixture(scope="module")
def instantid_server(tmp_path_factory, tiny_models):
    with _stand_in_server(tmp_path_factory, tiny_models, "tiny-instantid") as url:
        yield url


@pytest.fixture(scope="module")
def musetalk_server(tmp_path_factory, tiny_models):
    with _stand_in_server(tmp_path_factory, tiny_models, "tiny-musetalk") as url:
        yield url


# -- InstantID ---------------------------------------------------------------------------------
def _identity(url: str, **body):
    request = {"prompt": "portrait photo", "face_image": b64(FACE), "width": 96, "height": 64,
               "num_inference_steps": 2, "seed": 3, **body}
    return requests.post(f"{url}/v1/predict", json=request, timeout=120)


def test_instantid_draws_the_asked_size_from_a_face(instantid_server: str) -> None:
    response = _identity(instantid_server)
    assert response.status_code == 200, response.text
    body = response.json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))))
    assert image.shape == (64, 96, 3) and (body["width"], body["height"], body["seed"]) == (96, 64, 3)
    assert image.std() > 1.0  # not a constant picture
    raw = requests.post(f"{instantid_server}/v1/predict", headers={"Accept": "image/png"}, timeout=120,
                        json={"prompt": "portrait photo", "face_image": b64(FACE), "width": 96, "height": 64,
                              "num_inference_steps": 2, "seed": 3})
    assert raw.headers["content-type"] == "image/png" and raw.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_instantid_output_depends_on_the_identity_and_pose_strengths(instantid_server: str) -> None:
    def pixels(**body) -> np.ndarray:
        response = _identity(instantid_server, **body)
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))), dtype=np.int16)

    base = pixels()
    assert np.array_equal(base, pixels())  # same seed, same image
    assert np.abs(base - pixels(identity_strength=0.0)).max() > 0
    assert np.abs(base - pixels(pose_strength=0.0)).max() > 0


def test_instantid_identity_batch_follows_guidance(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """With guidance diffusers doubles the batch (unconditional first), and so must the identity
    embedding (zeros first); without it (guidance_scale <= 1), one of each. The tokens the
    IdentityNet reads have the same batch as the UNet's."""
    from server.custom.instantid import load
    from server.schemas import IdentityToImageRequest
    from server.spec import ModelSpec

    data = _manifest("tiny-instantid")
    spec = ModelSpec.from_document(json.loads(write_manifest_json(tmp_path, data).read_text()))
    predictor = load(spec, model_dir(tmp_path, tiny_models, data), "cpu")
    seen = []
    project = predictor.pipe.unet.encoder_hid_proj.forward
    predictor.pipe.unet.encoder_hid_proj.forward = lambda embeds: seen.append(embeds[0].shape[0]) or project(embeds)
    controlnet_batches = []
    swapped = predictor.pipe.controlnet.forward
    predictor.pipe.controlnet.forward = lambda *a, **k: controlnet_batches.append(
        (a[0].shape[0], predictor._tokens.shape[0])) or swapped(*a, **k)
    for guidance in (1.0, 5.0):
        request = IdentityToImageRequest(prompt="p", face_image=b64(FACE), width=64, height=64,
                                         num_inference_steps=1, guidance_scale=guidance, seed=0)
        assert predictor.predict(request).pixels.shape == (64, 64, 3)
    assert seen == [1, 1, 2, 2], seen  # projected by the loader (for the IdentityNet), then by the UNet
    assert controlnet_batches == [(1, 1), (2, 2)]


def test_instantid_needs_face_embeddings(tmp_path: Path) -> None:
    """A face analyzer without recognition is refused at load, not on every request."""
    from server.custom.instantid import InstantID
    from server.spec import ModelSpec

    class NoEmbeddings:
        embeds = False

    data = _manifest("tiny-instantid")
    spec = ModelSpec.from_document(json.loads(write_manifest_json(tmp_path, data).read_text()))
    import server.custom.instantid as module

    original = module.face_analyzer
    module.face_analyzer = lambda *args: NoEmbeddings()
    try:
        for folder in ("sdxl", "instantid/ControlNetModel"):
            (tmp_path / "model" / folder).mkdir(parents=True)
        (tmp_path / "model" / "sdxl" / "model_index.json").write_text("{}")
        (tmp_path / "model" / "instantid" / "ControlNetModel" / "config.json").write_text("{}")
        (tmp_path / "model" / "instantid" / "ip-adapter.bin").write_bytes(b"")
        with pytest.raises(LoadError, match="face_modules must include recognition"):
            InstantID(spec, tmp_path / "model", "cpu")
    finally:
        module.face_analyzer = original


def test_pose_map_draws_the_five_landmarks_at_a_fixed_size() -> None:
    from server.custom.instantid import pose_map

    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], dtype=np.float32)
    small, large = pose_map(landmarks, (100, 100), 100, 100), pose_map(landmarks, (100, 100), 400, 200)
    assert small.shape == (100, 100, 3) and large.shape == (200, 400, 3)
    assert tuple(small[40, 30]) == (255, 0, 0) and tuple(small[60, 50]) == (0, 0, 255)  # left eye, nose
    assert tuple(large[80, 160]) == (255, 0, 0)  # scaled 2x and centred: the eye at (30*2 + 100, 40*2)
    assert (small.sum(axis=2) > 0).sum() < 100 * 100 / 3  # dots and lines, not a filled canvas


def test_instantid_without_a_face_is_a_clear_422(instantid_server: str) -> None:
    response = _identity(instantid_server, face_image=b64(NO_FACE))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("face_image: no face found in the image")


@pytest.mark.parametrize(("face_image", "detail"), [
    ("%%%", "face_image: not valid base64"),
    (b64(b"GIF89a not really"), "face_image: not a readable image"),
])
def test_instantid_unreadable_face_image_is_422(instantid_server: str, face_image: str, detail: str) -> None:
    response = _identity(instantid_server, face_image=face_image)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail)


def test_instantid_schema_names_its_fields(instantid_server: str) -> None:
    missing = requests.post(f"{instantid_server}/v1/predict", json={"prompt": "x"}, timeout=10)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"][-1] == "face_image"
    spec = requests.get(f"{instantid_server}/openapi.json", timeout=10).json()
    fields = spec["components"]["schemas"]["IdentityToImageRequest"]["properties"]
    assert {"face_image", "identity_strength", "pose_strength", "prompt"} <= set(fields)


def test_instantid_reads_the_real_ip_adapter_layout(tiny_models: dict[str, Path]) -> None:
    """The stand-in's ip-adapter.bin has InstantID's key names; diffusers' loader maps them onto
    its resampler, and the IdentityNet is a ControlNet whose cross-attention takes those tokens."""
    import torch

    state = torch.load(tiny_models["tiny-instantid"] / "ip-adapter.bin", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert {"latents", "proj_in.weight", "layers.3.0.to_kv.weight", "layers.3.1.3.weight"} <= set(state["image_proj"])
    assert state["image_proj"]["proj_in.weight"].shape[1] == 512  # the ArcFace embedding's width
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["tiny-sdxl"] / "unet")
    cross = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    numbers = sorted(int(k.split(".")[0]) for k in state["ip_adapter"] if k.endswith("to_k_ip.weight"))
    assert cross > 1 and numbers == list(range(1, 2 * cross, 2))  # one pair per cross-attention, numbered 1, 3, 5...


# -- MuseTalk ----------------------------------------------------------------------------------
def _lipsync(url: str, accept: str | None = None, **body):
    request = {"reference": b64(FACE), "audio": b64(SPEECH), "fps": 25, **body}
    headers = {"Accept": accept} if accept else {}
    return requests.post(f"{url}/v1/predict", json=request, headers=headers, timeout=180)


def _frames(mp4: bytes) -> tuple[list[np.ndarray], bool]:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        has_audio = bool(container.streams.audio)
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)], has_audio


def test_musetalk_returns_an_mp4_with_a_frame_per_25th_of_a_second(musetalk_server: str) -> None:
    response = _lipsync(musetalk_server)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["frames"], body["width"], body["height"], body["fps"]) == (75, 192, 192, 25)  # 3 s of speech
    frames, has_audio = _frames(base64.b64decode(body["video"]))
    assert len(frames) == 75 and frames[0].shape == (192, 192, 3) and has_audio
    # The face (found at rows ~25-60 of this photo) has its lower half redrawn per frame, from the
    # audio around that frame: between two frames, the mouth area changes and the rest does not.
    moving = np.abs(frames[10].astype(np.int16) - frames[40].astype(np.int16)).max(axis=(1, 2))
    assert moving[45:70].max() > 20, moving
    assert moving[:20].max() <= 4 and moving[100:].max() <= 4, moving


def test_musetalk_raw_mp4_and_fps(musetalk_server: str) -> None:
    response = _lipsync(musetalk_server, accept="video/mp4")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    frames, _ = _frames(response.content)
    assert len(frames) == 75
    # MuseTalk is trained at 25 fps: its manifest pins fps (serving.request), so another rate is refused by name.
    other = _lipsync(musetalk_server, fps=10)
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["body", "fps"]


def test_musetalk_face_boxes_cut_off_by_the_edge_are_no_face() -> None:
    from server.custom.musetalk import face_box

    assert face_box((60.4, 20, 100, 60), (192, 192, 3), 10) == (60, 20, 100, 70)
    assert face_box((150, 170, 230, 250), (192, 192, 3), 10) == (150, 170, 192, 192)  # clipped, still usable
    assert face_box((191.6, 20, 260, 90), (192, 192, 3), 10) is None  # nothing left inside the frame
    assert face_box((10, 185, 60, 240), (192, 192, 3), 10) is None  # 7 rows left: too little to redraw


def test_musetalk_limits_the_video_it_makes(musetalk_server: str) -> None:
    big = png(np.zeros((1200, 2000, 3), dtype=np.uint8))
    response = _lipsync(musetalk_server, reference=b64(big))
    assert response.status_code == 422 and "more than 2073600 pixels" in response.json()["detail"]


def test_musetalk_takes_a_video_reference(musetalk_server: str) -> None:
    from server.media import encode_mp4

    face = np.asarray(Image.open(io.BytesIO(FACE)).convert("RGB"), dtype=np.float32) / 255.0
    clip = encode_mp4(np.stack([face, face[:, ::-1], face]), fps=25)  # three frames, the middle one mirrored
    response = _lipsync(musetalk_server, reference=b64(clip), audio=b64(wav(voiced_speech(1.0, 22050), 22050)))
    assert response.status_code == 200, response.text
    assert response.json()["frames"] == 25


def _tiff(image: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image)).save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(("body", "detail"), [
    ({"reference": b64(NO_FACE)}, "reference: no face found in the image"),
    ({"audio": b64(b"RIFF....WAVEfmt ")}, "audio: not a PCM WAV file"),
    ({"audio": b64(wav(voiced_speech(0.1, 16000), 16000))}, "audio: 0.10 s of audio; between 0.2 and 60 s needed"),
    ({"reference": b64(b"\x00\x01 not media")}, "reference: not an accepted image or video"),
    # untrusted bytes reach only the accepted formats' parsers (issue 15): a TIFF, an HLS playlist
    ({"reference": b64(_tiff(FACE))}, "reference: not an accepted image or video (PNG, JPEG or WebP image"),
    ({"reference": b64(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")},
     "reference: not an accepted image or video"),
])
def test_musetalk_bad_inputs_are_422_naming_the_field(musetalk_server: str, body: dict, detail: str) -> None:
    response = _lipsync(musetalk_server, **body)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text


def test_musetalk_audio_windows_follow_the_frames() -> None:
    from server.custom.musetalk import audio_windows, positional_encoding

    features = np.arange(1, 100 * 3 * 2 + 1, dtype=np.float32).reshape(100, 3, 2)  # 2 s at 50 Hz, 3 layers, dim 2
    windows = audio_windows(features, frames=50, fps=25)
    assert windows.shape == (50, 10 * 3, 2)  # 10 audio frames (4 before, 5 after) x 3 layers
    assert np.array_equal(windows[10].reshape(10, 3, 2), features[16:26])  # frame 10 is at audio frame 20
    assert not windows[0, :12].any() and np.array_equal(windows[0, 12:].reshape(6, 3, 2), features[:6])  # zeros before 0
    assert not windows[49].reshape(10, 3, 2)[-1].any()  # and past the end
    for fps in (1, 10, 60):  # the window is the trained 10 audio frames at any fps
        assert audio_windows(features, frames=3, fps=fps).shape == (3, 30, 2)
    code = positional_encoding(30, 8)
    assert code.shape == (30, 8) and np.allclose(code[0], [0, 1, 0, 1, 0, 1, 0, 1])


# -- XTTS: layout, validation, endpoint and smoke in front of a rigged voice --------------------
def _xtts(function: str = "tests.fixtures.rigged:speech") -> dict:
    data = copy.deepcopy(_manifest("xtts-v2"))
    data["entrypoint"]["function"] = function
    for artifact in data["sources"][0]["artifacts"]:
        artifact["size"] = None  # the synthetic folder has the files, not their real sizes
    return data


@pytest.fixture(scope="module")
def xtts_dir(tmp_path_factory) -> Path:
    return rigged.write_xtts_layout(tmp_path_factory.mktemp("xtts"))


@pytest.fixture(scope="module")
def xtts_server(tmp_path_factory, xtts_dir: Path):
    with serve(write_manifest_json(tmp_path_factory.mktemp("xtts-srv"), _xtts()), xtts_dir) as url:
        yield url


def _speak(url: str, accept: str | None = None, **body):
    request = {"text": "Hello there, this is a test.", "language": "en", "speaker_wav": b64(SPEECH), "seed": 1, **body}
    headers = {"Accept": accept} if accept else {}
    return requests.post(f"{url}/v1/predict", json=request, headers=headers, timeout=60)


def test_tts_returns_wav_at_the_models_rate(xtts_server: str) -> None:
    response = _speak(xtts_server)
    assert response.status_code == 200, response.text
    body = response.json()
    with wave.open(io.BytesIO(base64.b64decode(body["audio"]))) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24000, 1, 2)
        assert reader.getnframes() == round(body["seconds"] * 24000)
    assert body["sample_rate"] == 24000 and body["seed"] == 1 and body["seconds"] > 1.0
    raw = _speak(xtts_server, accept="audio/wav")
    assert raw.headers["content-type"] == "audio/wav" and raw.content[:4] == b"RIFF" and raw.headers["x-seed"] == "1"


@pytest.mark.parametrize(("body", "detail"), [
    ({"language": "xx"}, "language: 'xx' is not one this model speaks: en, es, fr, de, it, pt, pl, tr, ru, nl, cs, ar, hu, hi"),
    ({"language": "ja"}, "language: 'ja' is not one this model speaks"),  # in config.json, not in options.languages
    ({"speaker_wav": b64(wav(np.zeros(16000 * 3, dtype=np.float32), 16000))}, "speaker_wav: the clip is silent"),
    ({"speaker_wav": b64(wav(voiced_speech(1.0, 16000), 16000))}, "speaker_wav: 1.00 s of audio; between 2 and 30 s needed"),
    ({"speaker_wav": b64(FACE)}, "speaker_wav: not a PCM WAV file"),
    ({"text": "   "}, "text: nothing to say"),
])
def test_tts_bad_inputs_are_422_naming_the_field(xtts_server: str, body: dict, detail: str) -> None:
    response = _speak(xtts_server, **body)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text


def test_tts_schema_refuses_a_malformed_language_before_the_model(xtts_server: str) -> None:
    response = _speak(xtts_server, language="English")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "language"


@pytest.mark.parametrize(("function", "reason"), [
    ("tests.fixtures.rigged:speech", None),
    ("tests.fixtures.rigged:silent_speech", "audio is silent"),
    ("tests.fixtures.rigged:wrong_rate_speech", "audio is at 16000 Hz, the model's rate is 24000 Hz"),
])
def test_tts_smoke_checks_the_audio(tmp_path: Path, xtts_dir: Path, function: str, reason: str | None) -> None:
    code, result = run_smoke(write_manifest_json(tmp_path, _xtts(function)), xtts_dir)
    if reason is None:
        assert code == 0 and result["passed"] and result["wav_bytes"] > 44 and result["audio_seconds"] > 1.0, result
    else:
        assert code == 1 and result["reason"].startswith(reason), result


def test_tts_smoke_length_bounds_apply(tmp_path: Path, xtts_dir: Path) -> None:
    data = _xtts()
    data["smoke_test"]["expect"]["max_seconds"] = 1.5
    code, result = run_smoke(write_manifest_json(tmp_path, data), xtts_dir)
    assert code == 1 and result["reason"].startswith("audio lasts") and "expected 1 to 1.5 s" in result["reason"]


def test_video_smoke_refuses_a_still_video(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    data = _manifest("tiny-musetalk")
    data["entrypoint"] = {"loader": "custom", "function": "tests.fixtures.rigged:still_video"}
    code, result = run_smoke(write_manifest_json(tmp_path, data), model_dir(tmp_path, tiny_models, data))
    assert code == 1 and result["reason"] == "all 75 frames are the same: the video does not move", result


def test_xtts_loader_checks_the_folder_before_needing_coqui(tmp_path: Path) -> None:
    from server.custom.xtts import load
    from server.spec import ModelSpec

    spec = ModelSpec.from_document(json.loads(write_manifest_json(tmp_path, _xtts("server.custom.xtts:load")).read_text()))
    folder = rigged.write_xtts_layout(tmp_path / "xtts")
    (folder / "model.pth").unlink()
    with pytest.raises(LoadError, match=r"lacks model\.pth$"):
        load(spec, folder, "cpu")
    rigged.write_xtts_layout(folder, model="tortoise")
    with pytest.raises(LoadError, match="describes model 'tortoise', not xtts"):
        load(spec, folder, "cpu")
    (folder / "config.json").write_text("{}")
    with pytest.raises(LoadError, match="not an XTTS config"):
        load(spec, folder, "cpu")
    rigged.write_xtts_layout(folder, languages=("en", "de"))
    with pytest.raises(LoadError, match="entrypoint.options.languages es, fr, it, pt, pl, tr, ru, nl, cs, ar, hu, hi "
                                        "not in config.json's en, de"):
        load(spec, folder, "cpu")
    rigged.write_xtts_layout(folder)
    try:
        import TTS  # noqa: F401
    except ImportError:
        with pytest.raises(LoadError, match=r"XTTS needs coqui-tts in the image \(pin coqui-tts in runtime.packages\)"):
            load(spec, folder, "cpu")
    else:  # pragma: no cover - a machine with coqui-tts gets past the checks to the (fake) weights
        with pytest.raises(Exception):  # noqa: B017
            load(spec, folder, "cpu")


def test_xtts_text_is_split_into_sentences_within_the_limit() -> None:
    from server.custom.xtts import split_text

    text = "One two three. Four five six! Seven eight nine? Ten eleven; twelve. Thirteen"
    assert split_text(text, 30) == ["One two three. Four five six!", "Seven eight nine? Ten eleven;", "twelve. Thirteen"]
    assert split_text(text, 1000) == [text]
    assert split_text("  Hello.  ", 250) == ["Hello."]
    long_sentence = " ".join(["word"] * 100) + "."
    pieces = split_text(long_sentence, 50)
    assert all(len(piece) <= 50 for piece in pieces) and " ".join(pieces) == long_sentence
    assert split_text("x" * 120, 50) == ["x" * 50, "x" * 50, "x" * 20]  # a word longer than the limit is cut
    assert split_text("\u4f60\u597d\u3002\u518d\u89c1\u3002", 3) == ["\u4f60\u597d\u3002", "\u518d\u89c1\u3002"]


def test_face_analysis_backend_is_checked(tmp_path: Path) -> None:
    from server.custom.faces import face_analyzer

    with pytest.raises(LoadError, match="face_analysis 'dlib': expected insightface or opencv-haar"):
        face_analyzer({"face_analysis": "dlib"}, tmp_path, "cpu")
    with pytest.raises(LoadError, match="cannot read the projection"):
        face_analyzer({"face_analysis": "opencv-haar"}, tmp_path, "cpu")


def test_haar_finds_the_smoke_face_and_not_a_ramp(tiny_models: dict[str, Path]) -> None:
    from server.custom.faces import face_analyzer, largest_face
    from server.media import decode_image

    analyzer = face_analyzer({"face_analysis": "opencv-haar"}, tiny_models["tiny-instantid"], "cpu")
    face = largest_face(analyzer, decode_image("f", b64(FACE)), "f")
    x0, y0, x1, y1 = face.box
    assert 40 < x0 < x1 < 120 and 0 < y0 < y1 < 100  # the astronaut's face, upper middle of the photo
    assert face.landmarks.shape == (5, 2) and face.embedding.shape == (512,)
    assert x0 < face.landmarks[0, 0] < face.landmarks[1, 0] < x1  # left eye left of the right eye, inside the box
    with pytest.raises(InputError, match="^f: no face found"):
        largest_face(analyzer, decode_image("f", b64(NO_FACE)), "f")


def test_the_smoke_speech_is_what_its_maker_makes() -> None:
    """server/assets/smoke/speech.wav is generated, not recorded: regenerate it, byte for byte."""
    assert SPEECH == wav(voiced_speech(3.0, 16000), 16000)


@pytest.mark.parametrize(("name", "loader", "first_missing"), [
    ("tiny-instantid", "server.custom.instantid", "sdxl/model_index.json"),
    ("tiny-musetalk", "server.custom.musetalk", "musetalk/musetalkV15/musetalk.json"),
])
def test_a_part_missing_from_the_model_folder_is_one_line(tmp_path: Path, name: str, loader: str, first_missing: str) -> None:
    import importlib

    from server.spec import ModelSpec

    spec = ModelSpec.from_document(json.loads(write_manifest_json(tmp_path, _manifest(name)).read_text()))
    with pytest.raises(LoadError, match=rf"{tmp_path / 'model' / first_missing} is missing: check entrypoint.options"):
        importlib.import_module(loader).load(spec, tmp_path / "model", "cpu")
