"""Inputs built to cost far more than their size, for tests and ``make bench`` (issue 25)."""

from __future__ import annotations

import io

from PIL import Image

_SOS, _DHT, _EOI = 0xDA, 0xC4, 0xD9


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI; a scan's segment includes its
    entropy-coded data (which ends at the first 0xFF not followed by 0x00 or a restart marker)."""
    segments = []
    position = 2
    while position < len(data):
        marker = data[position + 1]
        if marker == _EOI:
            segments.append((marker, position, position + 2))
            break
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == _SOS:
            while (follower := data[(end := data.index(b"\xff", end)) + 1]) == 0 or (
                0xD0 <= follower <= 0xD7
            ):
                end += 2
        segments.append((marker, position, end))
        position = end
    return segments


def progressive_jpeg_repeating_scan(side: int = 4096, repeats: int = 100_000) -> bytes:
    """A grey ``side``² progressive JPEG whose first AC scan (with its Huffman table) is repeated
    ``repeats`` times: a few MB that a decoder without a scan limit works on for minutes."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = jpeg_segments(data)
    for index, (marker, start, end) in enumerate(segments):
        spectral_start = data[start + 7] if marker == _SOS else 0
        if marker == _SOS and spectral_start > 0:  # a one-component scan: Ss after its selector
            first = start
            while index > 0 and segments[index - 1][0] == _DHT:
                index -= 1
                first = segments[index][1]
            block = data[first:end]
            return data[:first] + block * repeats + data[end:]
    raise AssertionError("the encoder wrote no AC scan")
