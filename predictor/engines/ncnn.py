"""A small reader for ncnn models (text ``.param`` graph + ``.bin`` weights).

The sr engine runs shipped ncnn weights through plain PyTorch, so it only needs the graph and
the arrays, not ncnn itself. Format facts (mirroring ncnn's ``ParamDict`` and ``ModelBin``):

* ``.param``: magic ``7767517``, then ``layer_count blob_count``, then one line per layer:
  ``type name n_in n_out in_blobs... out_blobs... k=v...``. A key ``-23300 - k`` carries an
  array for id ``k`` written ``n,a,b,...``; a value with ``.``/``e`` is a float, else an int.
* ``.bin``: the layers' arrays back to back, in layer order. ``ModelBin::load(n, 0)`` reads a
  4-byte tag first (``0x01306B47``: fp16, padded to 4 bytes; ``0``: raw fp32), while
  ``load(n, 1)`` reads ``n`` raw fp32 values with no tag (used for biases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
ARRAY_KEY_BASE = -23300

ParamValue = int | float | list[int | float]

#: layers that own no weights (the ones the sr models use, plus a few harmless neighbours)
WEIGHTLESS_LAYERS = frozenset(
    {
        "Input",
        "Split",
        "Concat",
        "Eltwise",
        "BinaryOp",
        "Interp",
        "ReLU",
        "Sigmoid",
        "TanH",
        "Clip",
        "Crop",
        "PixelShuffle",
        "Reshape",
        "Permute",
        "Flatten",
        "Softmax",
        "Dropout",
        "Noop",
        "UnaryOp",
        "Pooling",
        "Slice",
    }
)


class NcnnFormatError(ValueError):
    """The .param or .bin does not match the ncnn format (or this reader's subset of it)."""


@dataclass
class NcnnLayer:
    """One line of the .param file plus the arrays it owns in the .bin (in load order)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue) -> ParamValue:
        """Return param ``key`` or ncnn's ``default`` for it."""
        return self.params.get(key, default)


@dataclass
class NcnnModel:
    """A parsed ncnn model: layers in file (= topological = weight) order."""

    layers: list[NcnnLayer]
    blob_count: int

    def of_type(self, layer_type: str) -> list[NcnnLayer]:
        """The layers of one type, in order."""
        return [layer for layer in self.layers if layer.type == layer_type]


def _parse_value(text: str) -> int | float:
    """ncnn treats a value as float when it has a '.' or an exponent, else as an int."""
    try:
        if any(c in text for c in ".eE") or text.lower() in ("nan", "inf", "-inf"):
            return float(text)
        return int(text)
    except ValueError as exc:
        raise NcnnFormatError(f"bad param value {text!r}") from exc


def parse_param(text: str) -> tuple[list[NcnnLayer], int]:
    """Parse the text of a .param file into weightless layers and the declared blob count."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise NcnnFormatError(f"not an ncnn text param file (magic {PARAM_MAGIC} missing)")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise NcnnFormatError("missing 'layer_count blob_count' line")
    layer_count, blob_count = (int(v) for v in lines[1])
    rows = lines[2:]
    if len(rows) != layer_count:
        raise NcnnFormatError(f"header says {layer_count} layers, file has {len(rows)}")
    layers = []
    for row in rows:
        if len(row) < 4:
            raise NcnnFormatError(f"truncated layer line: {' '.join(row)}")
        layer_type, name, n_in, n_out = row[0], row[1], int(row[2]), int(row[3])
        blobs_end = 4 + n_in + n_out
        if len(row) < blobs_end:
            raise NcnnFormatError(f"layer {name}: fewer blob names than declared")
        params: dict[int, ParamValue] = {}
        for item in row[blobs_end:]:
            key_text, sep, value = item.partition("=")
            if not sep:
                raise NcnnFormatError(f"layer {name}: param {item!r} is not k=v")
            key = int(key_text)
            if key <= ARRAY_KEY_BASE:
                count_text, *values = value.split(",")
                if int(count_text) != len(values):
                    raise NcnnFormatError(f"layer {name}: array param {item!r} count mismatch")
                params[ARRAY_KEY_BASE - key] = [_parse_value(v) for v in values]
            else:
                params[key] = _parse_value(value)
        layers.append(
            NcnnLayer(layer_type, name, row[4 : 4 + n_in], row[4 + n_in : blobs_end], params)
        )
    blobs = {blob for layer in layers for blob in layer.outputs}
    if len(blobs) != blob_count:
        raise NcnnFormatError(f"header says {blob_count} blobs, layers produce {len(blobs)}")
    return layers, blob_count


class _WeightReader:
    """Sequential reader with ncnn ``ModelBin::load`` semantics."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise NcnnFormatError(
                f"{self.source}: truncated while reading {what} "
                f"(need {nbytes} bytes at offset {self.pos}, file has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def load(self, count: int, kind: int, what: str) -> np.ndarray:
        """``kind`` 0: tagged (fp16 or fp32); ``kind`` 1: raw fp32 without tag."""
        if kind == 1:
            return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)
        tag = int.from_bytes(self._take(4, f"{what} tag"), "little")
        if tag == TAG_FP16:
            nbytes = (2 * count + 3) // 4 * 4  # fp16 payloads are padded to 4 bytes
            raw = self._take(nbytes, what)[: 2 * count]
            return np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if tag == TAG_FP32:
            return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)
        raise NcnnFormatError(
            f"{self.source}: {what} has unsupported storage tag 0x{tag:08X} "
            "(only fp16 0x01306B47 and raw fp32 0x00000000 are supported)"
        )


def _load_conv_like(layer: NcnnLayer, reader: _WeightReader) -> None:
    """Convolution / Deconvolution / *DepthWise / InnerProduct: weight (tagged) then bias."""
    if layer.get(8, 0):
        raise NcnnFormatError(f"layer {layer.name}: int8 quantised weights are not supported")
    if layer.get(19, 0) and layer.type != "InnerProduct":
        return  # dynamic weight: comes from a blob, nothing in the .bin
    num_output = int(layer.get(0, 0))
    size = int(layer.get(2 if layer.type == "InnerProduct" else 6, 0))
    layer.weights["weight"] = reader.load(size, 0, f"{layer.name} weight")
    if layer.get(1 if layer.type == "InnerProduct" else 5, 0):
        layer.weights["bias"] = reader.load(num_output, 1, f"{layer.name} bias")


_CONV_LIKE = frozenset(
    {
        "Convolution",
        "Deconvolution",
        "ConvolutionDepthWise",
        "DeconvolutionDepthWise",
        "InnerProduct",
    }
)


def load_model(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Read a .param/.bin pair; every byte of the .bin must be claimed by some layer."""
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    layers, blob_count = parse_param(param_path.read_text(encoding="utf-8"))
    reader = _WeightReader(bin_path.read_bytes(), str(bin_path))
    for layer in layers:
        if layer.type in _CONV_LIKE:
            _load_conv_like(layer, reader)
        elif layer.type == "PReLU":
            layer.weights["slope"] = reader.load(int(layer.get(0, 0)), 1, f"{layer.name} slope")
        elif layer.type == "Scale":
            size = int(layer.get(0, 0))
            if size != -233:  # -233: the scale comes from a second input blob
                layer.weights["scale"] = reader.load(size, 1, f"{layer.name} scale")
                if layer.get(1, 0):
                    layer.weights["bias"] = reader.load(size, 1, f"{layer.name} bias")
        elif layer.type not in WEIGHTLESS_LAYERS:
            raise NcnnFormatError(
                f"layer {layer.name}: type {layer.type} is not supported by this reader"
            )
    if reader.pos != len(reader.data):
        raise NcnnFormatError(
            f"{bin_path}: {len(reader.data) - reader.pos} trailing bytes after the last layer "
            "(param/bin mismatch or a parsing bug)"
        )
    return NcnnModel(layers, blob_count)
