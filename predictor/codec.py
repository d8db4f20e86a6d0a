"""Decode input bytes into an image and encode results, with deliberate settings.

Decoding takes the still formats users send (JPEG, PNG, WebP, GIF and TIFF as their first frame,
BMP, AVIF where Pillow has it, HEIF/HEIC with pillow-heif), checks the pixel count from the
header before any pixel is decoded (decompression bombs), refuses JPEGs with more scans than any
encoder writes (each scan is a pass over every pixel) and applies EXIF orientation.
Transparency is kept for outputs that can hold it (PNG, WebP: the colour goes through the engine,
the alpha is resized alongside) and flattened onto white otherwise. Encoding uses settings
measured in ``make bench`` (docs/benchmarks.md): Pillow's defaults cost several times more CPU.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from predictor.errors import image_load_error, image_too_large
from predictor.schema import OutputFormat

try:  # HEIF/HEIC (phone photos) through the pillow-heif plugin, registered once, where installed
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF: tuple[str, ...] = ("HEIF",)
except ImportError:
    _HEIF = ()

#: Pillow's names of the formats decoded (MPO: a camera JPEG with a preview image inside)
SUPPORTED_INPUT_FORMATS = (
    ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    + (("AVIF",) if features.check("avif") else ())
    + _HEIF
)
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF" + "".join(
    f", {name}" for name in ("AVIF", "HEIF") if name in SUPPORTED_INPUT_FORMATS
)
#: the largest side each encoder writes (WebP's format field is 14 bits, JPEG's 16; PNG's 31)
MAX_SIDE: dict[OutputFormat, int] = {
    OutputFormat.jpeg: 65535,
    OutputFormat.png: 2**31 - 1,
    OutputFormat.webp: 16383,
}
#: the most JPEG scans decoded: a progressive JPEG has about 10 per image (one more image for an
#: EXIF thumbnail or an MPO's second frame), while each scan costs a full pass over the pixels,
#: so a few MB repeating one scan 100,000 times would hold a worker for minutes
MAX_JPEG_SCANS = 256
_START_OF_SCAN = b"\xff\xda"  # a marker: entropy-coded data never holds it (0xFF is stuffed)
#: output formats that hold an alpha channel
ALPHA_FORMATS = frozenset({OutputFormat.png, OutputFormat.webp})
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class Encoded:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


#: format → (Pillow format, content type, extension, save options). Measured choices:
#: JPEG q95 with 4:4:4 chroma keeps upscaled detail and costs a few ms per MP; PNG level 1 is ~5×
#: faster than the default level 6 for ~13% more bytes; WebP method 2 at q90 (the default method 4
#: is ~2× slower).
ENCODERS: dict[OutputFormat, tuple[str, str, str, dict]] = {
    OutputFormat.jpeg: ("JPEG", "image/jpeg", "jpg", {"quality": 95, "subsampling": 0}),
    OutputFormat.png: ("PNG", "image/png", "png", {"compress_level": 1}),
    OutputFormat.webp: ("WEBP", "image/webp", "webp", {"quality": 90, "method": 2}),
}


def decode_image(data: bytes, max_pixels: int, keep_alpha: bool = False) -> Image.Image:
    """Decode ``data`` (its first frame) into an upright RGB image, or RGBA when ``keep_alpha``
    and the image has transparency; raise a 400/413 naming the problem.

    Decoders raise many exception types on hostile bytes; every one is the input's fault (400).
    """
    try:
        with warnings.catch_warnings():
            # our own pixel limit (below) is the guard; Pillow's global one only warns first
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise image_load_error(
            f"image_url is not a decodable image; supported formats: {_FORMAT_NAMES}.",
            supported_formats=list(SUPPORTED_INPUT_FORMATS),
        ) from None
    except Image.DecompressionBombError:
        raise image_too_large(
            f"The image has more than {max_pixels} pixels.",
            ("body", "image_url"),
            max_pixels=max_pixels,
        ) from None
    except Exception as exc:
        raise image_load_error(f"The image could not be decoded: {exc}.") from None
    if image.format not in SUPPORTED_INPUT_FORMATS:
        raise image_load_error(
            f"Image format {image.format} is not supported; supported formats: {_FORMAT_NAMES}.",
            supported_formats=list(SUPPORTED_INPUT_FORMATS),
        )
    if image.format in ("JPEG", "MPO"):
        check_jpeg_scans(data)
    width, height = image.size
    if width * height > max_pixels:
        raise image_too_large(
            f"The image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}.",
            ("body", "image_url"),
            max_pixels=max_pixels,
            width=width,
            height=height,
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if keep_alpha and has_alpha(image):
            return image.convert("RGBA")
        return to_rgb(image)
    except Exception as exc:
        raise image_load_error(f"The {image.format} image could not be decoded: {exc}.") from None


def check_jpeg_scans(data: bytes) -> None:
    """Refuse a JPEG with more than :data:`MAX_JPEG_SCANS` scans before decoding any (400)."""
    scans = data.count(_START_OF_SCAN)
    if scans > MAX_JPEG_SCANS:
        raise image_load_error(
            f"The JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded (a progressive "
            "JPEG has about 10).",
            max_scans=MAX_JPEG_SCANS,
        )


def has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour (RGB, for the engine) and the alpha channel, if ``image`` has one."""
    if image.mode != "RGBA":
        return image, None
    return image.convert("RGB"), image.getchannel("A")


def restore_alpha(result: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """The engine's RGB result with the input's alpha resized to it (Lanczos: a sharp mask)."""
    if alpha is None:
        return result
    rgba = result.convert("RGBA")
    rgba.putalpha(alpha.resize(result.size, Image.LANCZOS))
    return rgba


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any Pillow mode: 16-bit/float greys rescaled, transparency flattened on white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode == "F" and peak <= 1.0:
            values = values * 255.0  # float images in [0, 1]
        elif peak > 255.0:
            values = values / 257.0  # 16-bit range onto 8 bits
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def encode_image(image: Image.Image, output_format: OutputFormat) -> Encoded:
    """Encode ``image`` with the measured settings of :data:`ENCODERS`."""
    pil_format, content_type, extension, options = ENCODERS[output_format]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return Encoded(buffer.getvalue(), content_type, extension, image.width, image.height)
