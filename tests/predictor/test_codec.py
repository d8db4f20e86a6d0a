"""Decoding (formats, bombs, orientation, modes) and encoding settings."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from predictor.codec import (
    SUPPORTED_INPUT_FORMATS,
    decode_image,
    encode_image,
    restore_alpha,
    split_alpha,
    to_rgb,
)
from predictor.errors import InputError
from predictor.schema import OutputFormat
from tests.conftest import encode, photo_crop


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width``×``height`` (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"])
def test_decodes_supported_formats(fmt: str) -> None:
    if fmt not in SUPPORTED_INPUT_FORMATS:
        pytest.skip(f"this Pillow has no {fmt} codec")
    image = decode_image(encode(photo_crop(40, 30), fmt), max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_animated_gif_and_multipage_tiff_give_their_first_frame() -> None:
    frames = [Image.new("RGB", (12, 10), colour) for colour in ("red", "blue", "green")]
    for fmt in ("GIF", "TIFF"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        image = decode_image(data, max_pixels=10_000)
        assert image.size == (12, 10) and image.getpixel((5, 5))[0] > 200, fmt


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_refuses_other_formats_naming_supported(fmt: str) -> None:
    with pytest.raises(InputError) as err:
        decode_image(encode(photo_crop(10, 10), fmt), max_pixels=10_000)
    assert err.value.status_code == 400
    assert "JPEG, PNG, WebP, GIF, BMP, TIFF" in err.value.msg


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "TIFF", "HEIF"])
def test_transparency_is_kept_when_asked(fmt: str) -> None:
    logo = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    logo.paste((200, 30, 30, 255), (4, 4, 12, 12))
    kept = decode_image(encode(logo, fmt), max_pixels=10_000, keep_alpha=True)
    assert kept.mode == "RGBA", fmt
    assert kept.getpixel((0, 0))[3] < 40 and kept.getpixel((8, 8))[3] > 215  # HEIF is lossy
    flattened = decode_image(encode(logo, fmt), max_pixels=10_000)
    assert flattened.mode == "RGB" and min(flattened.getpixel((0, 0))) > 215


def test_alpha_goes_around_the_engine_and_is_resized_alongside() -> None:
    logo = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    logo.paste((200, 30, 30, 255), (4, 4, 12, 12))
    colour, alpha = split_alpha(logo)
    assert colour.mode == "RGB" and alpha is not None
    upscaled = restore_alpha(colour.resize((32, 32)), alpha)
    assert upscaled.mode == "RGBA" and upscaled.size == (32, 32)
    assert upscaled.getpixel((1, 1))[3] == 0 and upscaled.getpixel((16, 16))[3] == 255
    assert split_alpha(colour) == (colour, None)
    assert restore_alpha(colour, None) is colour


def test_refuses_non_image_and_truncated() -> None:
    with pytest.raises(InputError) as text:
        decode_image(b"hello, I am not an image", max_pixels=10_000)
    assert text.value.error_type == "image_load_error"
    jpeg = encode(photo_crop(64, 64), "JPEG")
    with pytest.raises(InputError) as truncated:
        decode_image(jpeg[: len(jpeg) // 2], max_pixels=10_000)
    assert truncated.value.status_code == 400 and "could not be decoded" in truncated.value.msg


def test_pixel_limit_checked_from_header() -> None:
    bomb = png_with_header_size(60_000, 60_000)
    assert len(bomb) < 200
    with pytest.raises(InputError) as err:
        decode_image(bomb, max_pixels=16_000_000)
    assert err.value.status_code == 413 and err.value.error_type == "image_too_large"
    with pytest.raises(InputError):
        decode_image(encode(photo_crop(40, 30)), max_pixels=1000)


def test_exif_orientation_applied() -> None:
    image = photo_crop(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue(), max_pixels=10_000).size == (20, 40)


def test_modes_become_rgb() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    grey16 = Image.new("I;16", (4, 4), 65535)
    assert to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"
    palette = Image.new("P", (4, 4))
    assert to_rgb(palette).mode == "RGB"


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [
        (OutputFormat.jpeg, "image/jpeg", "jpg"),
        (OutputFormat.png, "image/png", "png"),
        (OutputFormat.webp, "image/webp", "webp"),
    ],
)
def test_encode_roundtrip(fmt: OutputFormat, content_type: str, extension: str) -> None:
    image = photo_crop(50, 30)
    encoded = encode_image(image, fmt)
    assert (encoded.content_type, encoded.extension) == (content_type, extension)
    assert (encoded.width, encoded.height) == (50, 30)
    back = Image.open(io.BytesIO(encoded.data))
    assert back.size == (50, 30) and back.format == fmt.name.upper()
