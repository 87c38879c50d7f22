"""Media in and out of the predict routes: base64 request fields to arrays, arrays to bytes.

Every decoder raises InputError with a message naming the field, which the app turns into a
422: a client that sent a broken file learns which one and why, and the model is never
called. Audio is read with the standard library (PCM WAV) and resampled here; video goes
through PyAV (imported only when a video is read or written).
"""

from __future__ import annotations

import base64
import binascii
import io
import wave

import numpy as np

from server.errors import InputError

MAX_PIXELS = 4096 * 4096
# The image formats the API accepts. Pillow is asked to try these plugins only, so no other
# parser (PSD, TIFF, EPS through Ghostscript, ...) ever reads a request's bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# The video containers the API accepts: FFmpeg demuxer -> what a client is told. A container is
# chosen by its leading bytes and opened by name, never by FFmpeg's probe, and the whitelist keeps
# any nested open to these too: no demuxer that reads other files or URLs (hls, dash, concat,
# image2 patterns, ...) is reachable from a request.
VIDEO_DEMUXERS = {"mov": "MP4/MOV", "matroska": "WebM/Matroska"}
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")  # an MP4/MOV's first box
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM
ACCEPTED = f"PNG, JPEG or WebP image, or {', '.join(VIDEO_DEMUXERS.values())} video"


def _bytes_of(field: str, value: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field}: not valid base64") from None
    if not data:
        raise InputError(f"{field}: empty file")
    return data


def decode_image(field: str, value: str) -> np.ndarray:
    """base64 PNG/JPEG/WebP (nothing else) -> H x W x 3 uint8 RGB, upright as its EXIF orientation says (phone photos)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = _bytes_of(field, value)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"{field}: image is {image.width}x{image.height}, larger than 4096x4096")
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{field}: not a readable image (PNG, JPEG or WebP): {exc}") from None


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling of a mono float waveform (enough for conditioning inputs)."""
    if rate == target or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    count = max(1, round(samples.size * target / rate))
    positions = np.arange(count, dtype=np.float64) * (rate / target)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def decode_wav(field: str, value: str, min_seconds: float = 0.0, max_seconds: float = 600.0) -> tuple[np.ndarray, int]:
    """base64 PCM WAV (8/16/24/32-bit, any channels) -> (mono float32 in [-1, 1], sample rate)."""
    data = _bytes_of(field, value)
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width, rate, count = (reader.getnchannels(), reader.getsampwidth(),
                                            reader.getframerate(), reader.getnframes())
            raw = reader.readframes(count)
    except (wave.Error, EOFError) as exc:
        raise InputError(f"{field}: not a PCM WAV file: {exc}") from None
    if rate < 8000:
        raise InputError(f"{field}: sample rate {rate} Hz is too low (8000 Hz at least)")
    if channels < 1:
        raise InputError(f"{field}: no audio channels")
    raw = raw[: len(raw) // (width * channels) * (width * channels)]  # a truncated file: whole frames only
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        bytes_ = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = (bytes_[:, 0].astype(np.int32) | (bytes_[:, 1].astype(np.int32) << 8)
                | (bytes_[:, 2].astype(np.int32) << 16))
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)).astype(np.float32)
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(np.iinfo(dtype).max)
    else:
        raise InputError(f"{field}: {width * 8}-bit samples are not supported")
    samples = samples[: (samples.size // channels) * channels].reshape(-1, channels).mean(axis=1)
    seconds = samples.size / rate
    if not min_seconds <= seconds <= max_seconds:
        raise InputError(f"{field}: {seconds:.2f} s of audio; between {min_seconds:g} and {max_seconds:g} s needed")
    return samples, rate


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Mono float waveform -> 16-bit PCM WAV bytes."""
    pcm = (np.clip(np.nan_to_num(samples), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def decode_frames(field: str, value: str, max_frames: int,
                  max_pixels: int = MAX_PIXELS) -> tuple[list[np.ndarray], float | None]:
    """base64 image or video -> (RGB uint8 frames, all the first frame's size; the video's fps or
    None for a still image). Frames larger than max_pixels are refused."""
    data = _bytes_of(field, value)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        pass  # not an image (PIL reports a corrupt PNG as SyntaxError): try it as a video
    else:
        frame = decode_image(field, value)
        if frame.shape[0] * frame.shape[1] > max_pixels:
            raise InputError(f"{field}: image is {frame.shape[1]}x{frame.shape[0]}, more than {max_pixels} pixels")
        return [frame], None
    demuxer = video_demuxer(data)
    if demuxer is None:
        raise InputError(f"{field}: not an accepted image or video ({ACCEPTED})")
    import av

    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer,
                     container_options={"format_whitelist": ",".join(VIDEO_DEMUXERS)}) as container:
            if not container.streams.video:
                raise InputError(f"{field}: neither an image nor a video with a video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):
                if not frames:
                    if frame.width * frame.height > max_pixels:
                        raise InputError(f"{field}: video is {frame.width}x{frame.height}, more than {max_pixels} pixels")
                    size = {"width": frame.width, "height": frame.height}
                frames.append(frame.to_ndarray(format="rgb24", **size))  # a size change mid-stream is scaled back
                if len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as exc:
        raise InputError(f"{field}: not a readable image or video: {exc}") from None
    if not frames:
        raise InputError(f"{field}: the video has no frames")
    return frames, fps


def video_demuxer(data: bytes) -> str | None:
    """The FFmpeg demuxer for an accepted container, by its leading bytes; None for anything else."""
    if data[4:8] in _ISO_BOXES:
        return "mov"
    if data.startswith(_EBML):
        return "matroska"
    return None


def encode_mp4(frames: np.ndarray, fps: int, audio: tuple[np.ndarray, int] | None = None) -> bytes:
    """N x H x W x 3 uint8, or floats in [0, 1] -> H.264 MP4 (yuv420p, even sizes), with AAC audio when given."""
    import av

    if frames.dtype == np.uint8:
        array = frames
    else:
        array = (np.clip(np.nan_to_num(frames), 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = array.shape[1] - array.shape[1] % 2, array.shape[2] - array.shape[2] % 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio[1])
            sound.layout = "mono"
        for pixels in array:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:height, :width]), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = np.clip(np.nan_to_num(audio[0]), -1.0, 1.0).astype(np.float32)[None, :]
            chunk = sound.codec_context.frame_size or 1024
            for start in range(0, samples.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                                   format="fltp", layout="mono")
                piece.sample_rate = audio[1]
                container.mux(sound.encode(piece))
            container.mux(sound.encode())
    return buffer.getvalue()
