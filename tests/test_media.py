"""server/media.py (request media in, response media out), server/checks.py's audio and video
checks, and InputError. Everything is made in memory; no model, no server, no Docker."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import pytest
from PIL import Image

from server import media
from server.checks import audio_problem, video_problem
from server.errors import InputError
from tests.fixtures.media import voiced_speech


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def random_pixels(height: int = 12, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_bytes(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def pcm_wav(raw: bytes, width: int, channels: int = 1, rate: int = 16000) -> bytes:
    """A WAV written by the standard library from already-packed little-endian frames."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return buffer.getvalue()


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# errors


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)
    with pytest.raises(ValueError, match="bad input"):
        raise InputError("bad input")


# --------------------------------------------------------------------------------------------
# decode_image


def test_decode_image_png_round_trip_is_exact():
    pixels = random_pixels()
    decoded = media.decode_image("image", b64(image_bytes(pixels, "PNG")))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (12, 16, 3)
    np.testing.assert_array_equal(decoded, pixels)


def test_decode_image_jpeg_round_trip_is_close():
    # A smooth gradient survives JPEG far better than noise: the mean error stays small.
    y, x = np.mgrid[0:32, 0:48]
    pixels = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)
    decoded = media.decode_image("image", b64(image_bytes(pixels, "JPEG", quality=95)))
    assert decoded.shape == (32, 48, 3)
    assert decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 4


def test_decode_image_converts_grayscale_and_rgba_to_rgb():
    gray = np.random.default_rng(1).integers(0, 256, (10, 8), dtype=np.uint8)
    decoded = media.decode_image("image", b64(image_bytes(gray, "PNG")))
    assert decoded.shape == (10, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)
    rgba = np.random.default_rng(2).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    decoded = media.decode_image("image", b64(image_bytes(rgba, "PNG")))
    assert decoded.shape == (6, 5, 3)
    np.testing.assert_array_equal(decoded, rgba[..., :3])


def test_decode_image_not_base64_names_the_field():
    with pytest.raises(InputError, match=r"^portrait: not valid base64"):
        media.decode_image("portrait", "this is *not* base64!")


def test_decode_image_garbage_bytes():
    with pytest.raises(InputError, match=r"^portrait: not a readable image"):
        media.decode_image("portrait", b64(b"\x00\x01garbage, not an image" * 10))


def test_decode_image_truncated_png_header():
    png = image_bytes(random_pixels(), "PNG")
    with pytest.raises(InputError, match=r"^portrait: not a readable image"):
        media.decode_image("portrait", b64(png[:40]))


def corrupt_png() -> bytes:
    """A PNG whose header opens but whose image data (IDAT) has a flipped byte."""
    data = bytearray(image_bytes(random_pixels(), "PNG"))
    data[data.find(b"IDAT") + 4] ^= 0xFF
    return bytes(data)


def test_decode_image_corrupt_image_data():
    with pytest.raises(InputError, match=r"^portrait: not a readable image"):
        media.decode_image("portrait", b64(corrupt_png()))


def test_decode_image_empty():
    with pytest.raises(InputError, match=r"^portrait: empty file"):
        media.decode_image("portrait", "")


# --------------------------------------------------------------------------------------------
# encode_wav / decode_wav


@pytest.mark.parametrize("rate", [16000, 22050])
def test_wav_round_trip(rate):
    samples = (np.random.default_rng(rate).random(rate // 2) * 1.8 - 0.9).astype(np.float32)
    decoded, got_rate = media.decode_wav("audio", b64(media.encode_wav(samples, rate)))
    assert got_rate == rate
    assert decoded.dtype == np.float32
    assert decoded.shape == samples.shape
    assert np.abs(decoded - samples).max() <= 1 / 32767 + 1e-7


def test_encode_wav_is_16_bit_mono_pcm():
    data = media.encode_wav(sine(440, 0.25, 22050), 22050)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == 22050
        assert reader.getnframes() == int(0.25 * 22050)


def test_encode_wav_clips_and_zeroes_nan():
    samples = np.array([2.0, -3.0, 1.0, -1.0, np.nan, 0.5, np.inf, -np.inf], dtype=np.float32)
    with wave.open(io.BytesIO(media.encode_wav(samples, 16000)), "rb") as reader:
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(pcm, [32767, -32767, 32767, -32767, 0, 16384, 32767, -32767])


def test_decode_wav_8_bit_unsigned():
    raw = np.array([0, 64, 128, 192, 255], dtype=np.uint8)
    samples, rate = media.decode_wav("audio", b64(pcm_wav(raw.tobytes(), 1)))
    assert rate == 16000
    np.testing.assert_allclose(samples, [-1.0, -0.5, 0.0, 0.5, 127 / 128], atol=1e-7)


def test_decode_wav_24_bit_signed():
    values = np.array([0, 1 << 22, -(1 << 22), (1 << 23) - 1, -(1 << 23), -1], dtype=np.int64)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    samples, _ = media.decode_wav("audio", b64(pcm_wav(raw, 3)))
    np.testing.assert_allclose(samples, values / float(1 << 23), atol=1e-7)
    assert samples[2] == pytest.approx(-0.5)
    assert samples[-1] < 0  # sign extension of 0xFFFFFF


def test_decode_wav_32_bit_signed():
    values = np.array([0, 1 << 30, -(1 << 30), (1 << 31) - 1, -(1 << 31)], dtype="<i4")
    samples, _ = media.decode_wav("audio", b64(pcm_wav(values.tobytes(), 4)))
    np.testing.assert_allclose(samples, [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-6)


def test_decode_wav_stereo_is_averaged_to_mono():
    left = np.array([1000, -2000, 3000, 32767], dtype="<i2")
    right = np.array([3000, 2000, -3000, 32767], dtype="<i2")
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    samples, rate = media.decode_wav("audio", b64(pcm_wav(interleaved.tobytes(), 2, channels=2, rate=22050)))
    assert rate == 22050
    assert samples.shape == (4,)
    np.testing.assert_allclose(samples, (left.astype(float) + right) / 2 / 32767, atol=1e-7)


def test_decode_wav_stereo_24_bit():
    frames = [(1 << 22, -(1 << 22)), (1 << 22, 1 << 22), (-(1 << 23), 0)]
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for frame in frames for v in frame)
    samples, _ = media.decode_wav("audio", b64(pcm_wav(raw, 3, channels=2)))
    np.testing.assert_allclose(samples, [0.0, 0.5, -0.5], atol=1e-7)


def test_decode_wav_duration_bounds():
    one_second = b64(media.encode_wav(np.zeros(16000, np.float32), 16000))
    samples, _ = media.decode_wav("voice", one_second, min_seconds=1.0, max_seconds=1.0)  # inclusive
    assert samples.size == 16000
    with pytest.raises(InputError, match=r"^voice: 1\.00 s of audio; between 2 and 10 s needed"):
        media.decode_wav("voice", one_second, min_seconds=2, max_seconds=10)
    with pytest.raises(InputError, match=r"^voice: 1\.00 s of audio; between 0 and 0\.5 s needed"):
        media.decode_wav("voice", one_second, max_seconds=0.5)


def test_decode_wav_rate_too_low():
    data = media.encode_wav(np.zeros(7999, np.float32), 7999)
    with pytest.raises(InputError, match=r"^voice: sample rate 7999 Hz is too low"):
        media.decode_wav("voice", b64(data))
    samples, rate = media.decode_wav("voice", b64(media.encode_wav(np.zeros(8000, np.float32), 8000)))
    assert rate == 8000 and samples.size == 8000


@pytest.mark.parametrize("data", [
    b"just some text, not audio",
    b"RIFF",
    b"RIFF\x00\x00\x00\x00WAVE",
])
def test_decode_wav_not_a_wav(data):
    with pytest.raises(InputError, match=r"^voice: not a PCM WAV file"):
        media.decode_wav("voice", b64(data))


def test_decode_wav_png_is_not_a_wav():
    with pytest.raises(InputError, match=r"^voice: not a PCM WAV file"):
        media.decode_wav("voice", b64(image_bytes(random_pixels(), "PNG")))


def test_decode_wav_not_base64_and_empty():
    with pytest.raises(InputError, match=r"^voice: not valid base64"):
        media.decode_wav("voice", "%%%")
    with pytest.raises(InputError, match=r"^voice: empty file"):
        media.decode_wav("voice", "")


# --------------------------------------------------------------------------------------------
# resample


@pytest.mark.parametrize("rate, target", [(16000, 24000), (24000, 16000), (22050, 16000), (8000, 48000)])
def test_resample_length_scales_with_rate(rate, target):
    samples = np.random.default_rng(0).standard_normal(rate // 4).astype(np.float32)
    out = media.resample(samples, rate, target)
    assert out.dtype == np.float32
    assert out.size == round(samples.size * target / rate)


def test_resample_keeps_dominant_frequency():
    samples = sine(440, 1.0, 16000)
    out = media.resample(samples, 16000, 24000)
    assert out.size == 24000
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(out.size, 1 / 24000)
    assert abs(freqs[spectrum.argmax()] - 440) <= 1.0
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.01)


def test_resample_keeps_endpoints_and_interpolates_linearly():
    samples = np.array([0.0, 1.0, 0.0, -1.0], dtype=np.float32)
    out = media.resample(samples, 1, 2)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0], atol=1e-7)


def test_resample_same_rate_returns_input():
    samples = sine(440, 0.1, 16000)
    out = media.resample(samples, 16000, 16000)
    np.testing.assert_array_equal(out, samples)
    assert out.dtype == np.float32
    as_double = media.resample(samples.astype(np.float64), 16000, 16000)
    assert as_double.dtype == np.float32
    np.testing.assert_array_equal(as_double, samples)


def test_resample_empty():
    out = media.resample(np.zeros(0, np.float32), 16000, 24000)
    assert out.size == 0


# --------------------------------------------------------------------------------------------
# encode_mp4 / decode_frames


def float_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, height, width, 3))


def test_encode_mp4_is_an_mp4():
    data = media.encode_mp4(float_frames(3, 16, 16), fps=25)
    assert data[4:8] == b"ftyp"


def test_encode_mp4_with_audio_has_video_and_audio_streams():
    import av

    data = media.encode_mp4(float_frames(5, 24, 32), fps=25, audio=(sine(440, 1.0, 16000), 16000))
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        assert len(container.streams.video) == 1
        assert len(container.streams.audio) == 1
        assert container.streams.audio[0].rate == 16000
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        decoded_audio = np.concatenate([frame.to_ndarray().reshape(-1)
                                        for frame in container.decode(audio=0)])
    # AAC adds priming/padding but keeps about a second of sound with energy in it.
    assert 16000 <= decoded_audio.size <= 16000 + 3 * 1024
    assert np.sqrt(np.mean(decoded_audio ** 2)) > 0.1


def test_encode_mp4_without_audio_has_no_audio_stream():
    import av

    data = media.encode_mp4(float_frames(2, 16, 16), fps=25)
    with av.open(io.BytesIO(data)) as container:
        assert len(container.streams.video) == 1
        assert len(container.streams.audio) == 0


def test_encode_mp4_crops_odd_sizes_to_even():
    import av

    data = media.encode_mp4(float_frames(3, 25, 33), fps=25)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (32, 24)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == 3
    assert all(frame.shape == (24, 32, 3) for frame in frames)


def test_decode_frames_of_a_png_is_one_still():
    pixels = random_pixels(10, 14)
    frames, fps = media.decode_frames("source", b64(image_bytes(pixels, "PNG")), max_frames=100)
    assert fps is None
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0], pixels)


def test_decode_frames_of_an_mp4():
    # Flat colours per frame so H.264 keeps them recognisable.
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1],
                        [0.5, 0.5, 0.5], [0.1, 0.9, 0.9]])
    video = np.broadcast_to(colours[:, None, None, :], (6, 24, 32, 3)).copy()
    frames, fps = media.decode_frames("source", b64(media.encode_mp4(video, fps=25)), max_frames=100)
    assert fps == pytest.approx(25, abs=0.5)
    assert len(frames) == 6
    for frame, colour in zip(frames, colours):
        assert frame.shape == (24, 32, 3)
        assert frame.dtype == np.uint8
        assert np.abs(frame.reshape(-1, 3).mean(axis=0) - colour * 255).max() < 12


def test_decode_frames_stops_at_max_frames():
    data = media.encode_mp4(float_frames(8, 16, 16), fps=25)
    frames, fps = media.decode_frames("source", b64(data), max_frames=3)
    assert len(frames) == 3
    assert fps == pytest.approx(25, abs=0.5)


def test_decode_frames_errors_name_the_field():
    with pytest.raises(InputError, match=r"^source: not an accepted image or video \(PNG, JPEG or WebP image"):
        media.decode_frames("source", b64(b"\x00" * 200), max_frames=10)
    with pytest.raises(InputError, match=r"^source: not valid base64"):
        media.decode_frames("source", "not base64 at all!", max_frames=10)
    with pytest.raises(InputError, match=r"^source: empty file"):
        media.decode_frames("source", "", max_frames=10)


def test_decode_frames_corrupt_png_is_an_input_error():
    with pytest.raises(InputError, match=r"^source: "):
        media.decode_frames("source", b64(corrupt_png()), max_frames=10)


def test_encode_mp4_nan_audio_is_zeroed():
    audio = sine(440, 0.5, 16000)
    audio[100] = np.nan
    assert media.encode_mp4(float_frames(2, 16, 16), fps=25, audio=(audio, 16000))[4:8] == b"ftyp"


# --------------------------------------------------------------------------------------------
# checks.audio_problem


AUDIO = {"kind": "audio", "sample_rate": 16000, "min_seconds": 0.5, "max_seconds": 5}


def test_audio_problem_passes_speech():
    speech = voiced_speech(2.0, 16000)
    assert speech.shape == (32000,)
    assert audio_problem(speech, 16000, AUDIO) is None


def test_audio_problem_silence():
    problem = audio_problem(np.zeros(16000, np.float32), 16000, AUDIO)
    assert problem is not None and "silent" in problem
    quiet = voiced_speech(2.0, 16000) * 1e-4
    problem = audio_problem(quiet, 16000, AUDIO)
    assert problem is not None and "silent" in problem


def test_audio_problem_dc_offset():
    problem = audio_problem(np.full(16000, 0.3, np.float32), 16000, AUDIO)
    assert problem is not None and "constant offset" in problem


def test_audio_problem_nan_and_inf():
    speech = voiced_speech(2.0, 16000)
    for bad in (np.nan, np.inf):
        samples = speech.copy()
        samples[100] = bad
        problem = audio_problem(samples, 16000, AUDIO)
        assert problem is not None and "NaN or infinite" in problem


def test_audio_problem_wrong_sample_rate():
    problem = audio_problem(voiced_speech(2.0, 22050), 22050, AUDIO)
    assert problem is not None
    assert "22050 Hz" in problem and "16000 Hz" in problem


def test_audio_problem_duration():
    short = audio_problem(voiced_speech(0.25, 16000), 16000, AUDIO)
    assert short is not None and "0.25 s" in short and "0.5 to 5 s" in short
    long = audio_problem(voiced_speech(6.0, 16000), 16000, AUDIO)
    assert long is not None and "6.00 s" in long
    # the bounds are inclusive
    assert audio_problem(voiced_speech(5.0, 16000), 16000, AUDIO) is None
    assert audio_problem(voiced_speech(0.5, 16000), 16000, AUDIO) is None


def test_audio_problem_stereo():
    speech = voiced_speech(2.0, 16000)
    problem = audio_problem(np.stack([speech, speech], axis=1), 16000, AUDIO)
    assert problem is not None and "not mono" in problem and "(32000, 2)" in problem


# --------------------------------------------------------------------------------------------
# checks.video_problem


VIDEO = {"kind": "video", "frames": 4, "width": 32, "height": 24}


def test_video_problem_passes_random_frames():
    assert video_problem(float_frames(4, 24, 32), VIDEO) is None


def test_video_problem_wrong_count():
    problem = video_problem(float_frames(5, 24, 32), VIDEO)
    assert problem is not None and "5 frames" in problem and "expected 4" in problem


def test_video_problem_wrong_size():
    problem = video_problem(float_frames(4, 32, 24), VIDEO)
    assert problem is not None and "24x32" in problem and "32x24" in problem


def test_video_problem_not_rgb_frames():
    problem = video_problem(np.random.default_rng(0).random((4, 24, 32)), VIDEO)
    assert problem is not None and "not a sequence of RGB frames" in problem
    problem = video_problem(np.random.default_rng(0).random((4, 24, 32, 4)), VIDEO)
    assert problem is not None and "not a sequence of RGB frames" in problem


def test_video_problem_constant_frame_is_named():
    frames = float_frames(4, 24, 32)
    frames[2] = 0.4
    problem = video_problem(frames, VIDEO)
    assert problem is not None
    assert problem.startswith("frame 2:") and "blank" in problem


def test_video_problem_nan():
    frames = float_frames(4, 24, 32)
    frames[3, 5, 7, 1] = np.nan
    problem = video_problem(frames, VIDEO)
    assert problem is not None and problem.startswith("frame 3:") and "NaN" in problem


def test_video_problem_still_video():
    frame = np.random.default_rng(1).random((1, 24, 32, 3), dtype=np.float32)
    problem = video_problem(np.repeat(frame, 4, axis=0), VIDEO)
    assert problem is not None and "does not move" in problem


def test_audio_problem_empty():
    assert audio_problem(np.zeros(0, dtype=np.float32), 16000, {**AUDIO, "min_seconds": 0.0}) == "audio is empty"


def test_decode_image_follows_exif_orientation():
    from PIL import Image

    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # stored landscape, 40 wide
    stored[:, :20] = 255
    buffer = io.BytesIO()
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    shown = media.decode_image("face", b64(buffer.getvalue()))
    assert shown.shape == (40, 20, 3)  # displayed portrait


def test_decode_image_refuses_a_decompression_bomb():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    for decode in (lambda v: media.decode_image("face", v), lambda v: media.decode_frames("face", v, 10)):
        with pytest.raises(InputError, match="^face: "):
            decode(b64(bomb))


@pytest.mark.parametrize("width", [2, 3])
def test_decode_wav_truncated_mid_sample_keeps_whole_frames(width: int):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(16000)
        writer.writeframes(b"\x10" * (width * 16000))
    data = buffer.getvalue()[:-1]  # one byte short of the last sample
    samples, rate = media.decode_wav("audio", b64(data))
    assert rate == 16000 and samples.size == 15999


def test_decode_frames_scales_a_size_change_back_to_the_first_frame():
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuvj420p"
        for size in ((32, 24), (64, 48), (32, 24)):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        container.mux(stream.encode())
    frames, _ = media.decode_frames("reference", b64(buffer.getvalue()), max_frames=10)
    assert [f.shape for f in frames] == [(24, 32, 3)] * len(frames) and len(frames) == 3


def test_video_problem_accepts_uint8_frames():
    frames = (np.random.default_rng(2).random((4, 24, 32, 3)) * 255).astype(np.uint8)
    assert video_problem(frames, VIDEO) is None
    assert "does not move" in video_problem(np.repeat(frames[:1], 4, axis=0), VIDEO)
    frames[1] = 7
    assert video_problem(frames, VIDEO).startswith("frame 1: image is blank")


# -- untrusted media: only the accepted formats' parsers see a request's bytes (issue 15) --------
def _video(container: str, codec: str, frames: int = 3) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for pixels in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(random_pixels(16, 16, pixels), format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "PPM", "ICO"])
def test_an_image_format_the_api_does_not_accept_is_refused(fmt: str) -> None:
    data = b64(image_bytes(random_pixels(16, 16), fmt))
    assert Image.open(io.BytesIO(base64.b64decode(data))).format == fmt  # a readable image, just not accepted
    with pytest.raises(InputError, match=r"^face: not a readable image \(PNG, JPEG or WebP\)"):
        media.decode_image("face", data)
    with pytest.raises(InputError, match=r"^reference: not an accepted image or video \(PNG, JPEG or WebP image, "
                                         r"or MP4/MOV, WebM/Matroska video\)$"):
        media.decode_frames("reference", data, max_frames=2)


def test_a_psd_and_an_eps_never_reach_their_parsers() -> None:
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + (16).to_bytes(4, "big") * 2 + b"\x00\x08\x00\x03" + b"\x00" * 64
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"
    for data in (psd, eps):
        with pytest.raises(InputError, match=r"^face: not a readable image \(PNG, JPEG or WebP\): cannot identify"):
            media.decode_image("face", b64(data))


@pytest.mark.parametrize(("container", "codec"), [("avi", "mpeg4"), ("mpegts", "mpeg2video"), ("flv", "flv")])
def test_a_video_container_the_api_does_not_accept_is_refused(container: str, codec: str) -> None:
    with pytest.raises(InputError, match=r"^reference: not an accepted image or video"):
        media.decode_frames("reference", b64(_video(container, codec)), max_frames=2)


@pytest.mark.parametrize(("playlist", "message"), [
    (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", "not an accepted"),
    (b"ffconcat version 1.0\nfile '/etc/passwd'\n", "not an accepted"),
    # a playlist whose first bytes claim an MP4 is opened by the MP4 demuxer alone, which cannot read it
    (b"\x00\x00\x00\x18ftyp#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "not a readable"),
])
def test_playlists_and_concat_scripts_are_refused(playlist: bytes, message: str) -> None:
    with pytest.raises(InputError, match=rf"^reference: {message} image or video"):
        media.decode_frames("reference", b64(playlist), max_frames=2)


def test_webm_and_matroska_are_accepted() -> None:
    frames, fps = media.decode_frames("reference", b64(_video("matroska", "libx264", 4)), max_frames=10)
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3) and fps == pytest.approx(10)


def test_the_video_demuxer_is_chosen_by_the_leading_bytes() -> None:
    assert media.video_demuxer(media.encode_mp4(float_frames(2, 16, 16), fps=5)) == "mov"
    assert media.video_demuxer(_video("matroska", "libx264")) == "matroska"
    assert media.video_demuxer(_video("avi", "mpeg4")) is None
    assert media.video_demuxer(b"#EXTM3U\n") is None
