"""fal's request and response schema for ``fal-ai/chrono-edit-lora-gallery/upscaler``.

One pydantic model each: FastAPI validates with them, the OpenAPI page shows them, the KServe v1
route and the CLI build them too. Defaults and ranges are fal's (see docs/api.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from predictor.engines.options import MAX_LORAS

APP_ID = "fal-ai/chrono-edit-lora-gallery/upscaler"
#: fal's queue also answers a request's routes under the app's owner/alias
OWNER_ALIAS = "/".join(APP_ID.split("/")[:2])  # fal-ai/chrono-edit-lora-gallery
#: numbers are JSON numbers: finite (no NaN, Infinity, 1e309) and never booleans or strings;
#: booleans are as strict (``"true"``, ``1`` and ``"no"`` are not booleans)
NUMBER = {"strict": True, "allow_inf_nan": False}


def _integral(value: object) -> object:
    """JSON has one number type: 30.0 is the integer 30 (as JSON Schema says); 30.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: an integer field: strict (no booleans, strings or fractions), integral floats taken as ints
INTEGRAL = BeforeValidator(_integral)
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts


class OutputFormat(StrEnum):
    jpeg = "jpeg"
    png = "png"
    webp = "webp"


class LoraWeight(BaseModel):
    """An extra LoRA applied for one request (fal's ``ChronoLoraWeight``)."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="Catalog name, hf://owner/repo/file.safetensors, or an allowed URL.",
        ),
    ]
    scale: Annotated[float, Field(ge=0, le=4, description="Weight of this LoRA.", **NUMBER)] = 1.0


class UpscaleRequest(BaseModel):
    """Input of the upscaler. Unknown fields are rejected so that a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")

    image_url: Annotated[
        str,
        Field(
            min_length=1,
            description="The image to upscale: an http(s) URL or a data: URI (JPEG, PNG, WebP).",
        ),
    ]
    upscale_factor: Annotated[
        float,
        Field(ge=1, le=4, description="Target scale factor for the output resolution.", **NUMBER),
    ] = 2.0
    guidance_scale: Annotated[
        float,
        Field(ge=0, le=10, description="Guidance scale; ≤ 1 means no negative pass.", **NUMBER),
    ] = 1.0
    enable_safety_checker: Annotated[
        bool, Field(description="Check the output for unsafe content.", strict=True)
    ] = True
    num_inference_steps: Annotated[
        int,
        Field(ge=2, le=50, description="Denoising steps for the upscaling pass.", strict=True),
        INTEGRAL,
    ] = 30
    lora_scale: Annotated[
        float, Field(ge=0, le=2, description="Weight of the Upscaler LoRA.", **NUMBER)
    ] = 1.0
    seed: Annotated[
        int | None,
        Field(
            ge=0,
            le=MAX_SEED,
            strict=True,
            description="Same seed and input give the same output; random when omitted.",
        ),
        INTEGRAL,
    ] = None
    output_format: OutputFormat = OutputFormat.jpeg
    sync_mode: Annotated[
        bool,
        Field(
            description="true: the image comes back as a data: URI; false: as a URL we serve.",
            strict=True,
        ),
    ] = False
    loras: Annotated[
        list[LoraWeight],
        Field(max_length=MAX_LORAS, description=f"At most {MAX_LORAS} extra LoRAs."),
    ] = Field(default_factory=list)


class ImageOut(BaseModel):
    url: str
    width: int
    height: int
    content_type: str
    file_name: str
    file_size: int


class UpscaleResponse(BaseModel):
    images: list[ImageOut]
    prompt: str
    seed: int
