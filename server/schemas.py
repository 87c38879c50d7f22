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


REQUEST_OF_TASK: dict[str, type[_Request]] = {
    "text-to-image": TextToImageRequest,
    "text-generation": TextGenerationRequest,
    "feature-extraction": EmbeddingRequest,
}
RESPONSE_OF_TASK: dict[str, type[BaseModel]] = {
    "text-to-image": TextToImageResponse,
    "text-generation": TextGenerationResponse,
    "feature-extraction": EmbeddingResponse,
}
