"""Request and response bodies of the predict route, by task."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TextToImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000, description="What to draw.")
    negative_prompt: str | None = Field(default=None, max_length=4000, description="What not to draw.")
    width: int = Field(default=512, ge=64, le=2048, description="Image width in pixels, a multiple of 8.")
    height: int = Field(default=512, ge=64, le=2048, description="Image height in pixels, a multiple of 8.")
    num_inference_steps: int = Field(default=28, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class Timings(BaseModel):
    queue_seconds: float
    inference_seconds: float


class TextToImageResponse(BaseModel):
    image: str = Field(description="The PNG, base64-encoded.")
    width: int
    height: int
    seed: int
    timings: Timings


REQUEST_OF_TASK: dict[str, type[BaseModel]] = {"text-to-image": TextToImageRequest}
