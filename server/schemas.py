"""Request and response bodies of the predict route, one pair per task."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timings(BaseModel):
    queue_seconds: float = Field(description="Seconds the request waited for the model.")
    inference_seconds: float = Field(description="Seconds the model ran.")


class TextToImageRequest(_Request):
    prompt: str = Field(min_length=1, max_length=4000, description="What to draw.")
    negative_prompt: str | None = Field(default=None, max_length=4000, description="What not to draw.")
    width: int = Field(default=512, ge=64, le=2048, description="Image width in pixels, a multiple of 16.")
    height: int = Field(default=512, ge=64, le=2048, description="Image height in pixels, a multiple of 16.")
    num_inference_steps: int = Field(default=28, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Guidance scale.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        # 16, not 8: the latent is 8x smaller and transformer pipelines (Flux, Z-Image) pack it in 2x2 patches.
        if value % 16:
            raise ValueError("must be a multiple of 16")
        return value


class TextToImageResponse(BaseModel):
    image: str = Field(description="The PNG, base64-encoded.")
    width: int
    height: int
    seed: int
    timings: Timings


class TextGenerationRequest(_Request):
    prompt: str = Field(min_length=1, max_length=32000, description="The text to continue.")
    max_new_tokens: int = Field(default=128, ge=1, le=4096, description="Most tokens to generate.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")


class TextGenerationResponse(BaseModel):
    text: str = Field(description="The generated continuation (without the prompt).")
    tokens: int = Field(description="Tokens generated.")
    seed: int
    timings: Timings


class EmbeddingRequest(_Request):
    inputs: list[str] = Field(min_length=1, max_length=64, description="Texts to embed.")
    normalize: bool = Field(default=True, description="Scale each vector to unit length.")

    @field_validator("inputs")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not text.strip() for text in value):
            raise ValueError("every input must contain text")
        return value


class EmbeddingResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    timings: Timings


# Files travel base64-encoded in JSON; ~28 MB of text is about 20 MB of file.
MAX_FILE_CHARS = 28_000_000


class IdentityToImageRequest(TextToImageRequest):
    face_image: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                            description="The face to keep: a PNG, JPEG or WebP holding one clearly visible face, base64.")
    identity_strength: float = Field(default=0.8, ge=0.0, le=1.5,
                                     description="How strongly the face's identity steers the image (IP-Adapter scale).")
    pose_strength: float = Field(default=0.8, ge=0.0, le=1.5,
                                 description="How strongly the face's landmarks fix its pose (ControlNet scale).")


class TextToSpeechRequest(_Request):
    text: str = Field(min_length=1, max_length=2000, description="What to say.")
    language: str = Field(default="en", min_length=2, max_length=8, pattern=r"^[a-z]{2}(-[a-z]{2})?$",
                          description="Language code of the text, one the model lists (en, de, fr, zh-cn...).")
    speaker_wav: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                             description="A clip of the voice to speak with: PCM WAV, 2 to 30 seconds, base64.")
    temperature: float = Field(default=0.75, gt=0.0, le=2.0, description="Sampling temperature.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")


class TextToSpeechResponse(BaseModel):
    audio: str = Field(description="16-bit PCM WAV, base64-encoded.")
    sample_rate: int
    seconds: float
    seed: int
    timings: Timings


class LipSyncRequest(_Request):
    reference: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                           description="The face to animate: an image, or a video whose frames are reused in turn, base64.")
    audio: str = Field(min_length=1, max_length=MAX_FILE_CHARS, description="The speech to lip-sync: PCM WAV, base64.")
    fps: int = Field(default=25, ge=1, le=60, description="Output frames per second.")


class LipSyncResponse(BaseModel):
    video: str = Field(description="H.264 MP4 with the audio, base64-encoded.")
    frames: int
    width: int
    height: int
    fps: int
    timings: Timings


REQUEST_OF_TASK: dict[str, type[_Request]] = {
    "text-to-image": TextToImageRequest,
    "identity-to-image": IdentityToImageRequest,
    "text-generation": TextGenerationRequest,
    "feature-extraction": EmbeddingRequest,
    "text-to-speech": TextToSpeechRequest,
    "lip-sync": LipSyncRequest,
}
RESPONSE_OF_TASK: dict[str, type[BaseModel]] = {
    "text-to-image": TextToImageResponse,
    "identity-to-image": TextToImageResponse,
    "text-generation": TextGenerationResponse,
    "feature-extraction": EmbeddingResponse,
    "text-to-speech": TextToSpeechResponse,
    "lip-sync": LipSyncResponse,
}
