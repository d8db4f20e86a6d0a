"""``chrono-upscaler``: serve the fal API, or upscale a file in process."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from predictor.config import Settings
from predictor.engines.options import MAX_LORAS, EngineOptions, LoraSettings
from predictor.flags import (
    DefaultsHelpFormatter,
    add_engine_options,
    add_serve_options,
    engine_options,
    settings_from_args,
)

__all__ = ["build_parser", "main", "settings_from_args"]
FORMAT_BY_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
DESCRIPTION = "chrono-upscaler: serve the fal API, or upscale a file in process."
#: the request fields ``upscale`` fills, and the flag that sets each (errors name the flag)
FLAG_OF_FIELD = {
    "upscale_factor": "--factor",
    "seed": "--seed",
    "loras": "--lora",
    "output_format": "--format",
    "image_url": "input",
}


class UsageError(Exception):
    """A command line that cannot work: said in one line, before any work, never a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chrono-upscaler", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the fal-compatible API on KServe",
        formatter_class=DefaultsHelpFormatter,
    )
    add_serve_options(serve)

    upscale = commands.add_parser(
        "upscale",
        help="upscale one image file in this process",
        formatter_class=DefaultsHelpFormatter,
    )
    upscale.add_argument(
        "input", type=Path, help="image file to upscale (JPEG, PNG, WebP, GIF, BMP, TIFF, …)"
    )
    upscale.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write, in an existing directory; its extension (.jpg, .jpeg, .png, "
        ".webp) gives the format unless --format does",
    )
    upscale.add_argument("--factor", type=float, default=2.0, help="upscale factor, 1 to 4")
    upscale.add_argument(
        "--format",
        choices=("jpeg", "png", "webp"),
        default=None,
        help="output format (default: from the output file's extension)",
    )
    upscale.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed, 0 ≤ seed < 2⁶⁴, for a repeatable chronoedit result (default: random)",
    )
    upscale.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help=f"an extra LoRA (chronoedit; up to {MAX_LORAS}): a catalog name, a file in "
        "--lora-dir, hf://… or a URL, with an optional :scale (default 1)",
    )
    add_engine_options(upscale)

    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a tiny random ChronoEdit model (real classes) for tests and GPU-less trials",
    )
    tiny.add_argument("directory", type=Path, help="where to write it (a --model-dir)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    tiny.add_argument(
        "--with-safety-checker",
        action="store_true",
        help="also write a tiny random safety checker into DIR/safety_checker",
    )
    tiny.add_argument(
        "--flag-everything",
        action="store_true",
        help="make that safety checker flag every image (tests of the flagged path)",
    )
    return parser


def _lora_item(text: str) -> dict[str, Any]:
    """``PATH[:SCALE]`` → a request's ``{path, scale}`` (a URL's own colons stay in the path)."""
    path, sep, tail = text.rpartition(":")
    try:
        return {"path": path, "scale": float(tail)} if sep and path else {"path": text}
    except ValueError:
        return {"path": text}


def output_format(output: Path, given: str | None) -> str:
    """The format to write: ``--format``, else the output file's extension; refused when the
    extension is not an output format (it would be written as something else)."""
    inferred = FORMAT_BY_SUFFIX.get(output.suffix.lower())
    if given is not None:
        if inferred is not None and inferred != given:
            raise UsageError(f"-o {output}: the extension says {inferred}, --format says {given}")
        return given
    if inferred is None:
        raise UsageError(
            f"-o {output}: cannot tell the output format from {output.suffix or 'no extension'!r};"
            f" use one of {', '.join(FORMAT_BY_SUFFIX)} or pass --format (jpeg, png, webp)"
        )
    return inferred


def check_paths(args: argparse.Namespace) -> None:
    """The input is readable and the output can be written, before any work is done."""
    if not args.input.is_file():
        raise UsageError(f"input {args.input}: no such file")
    folder = args.output.parent
    if not folder.is_dir():
        raise UsageError(f"-o {args.output}: directory {folder} does not exist")
    if args.output.is_dir():
        raise UsageError(f"-o {args.output}: is a directory; name a file")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"-o {args.output}: directory {folder} is not writable")


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """Schema errors as the server reports them, with each field named by its flag."""
    lines = []
    for error in errors:
        field, *rest = error["loc"] or ["request"]
        flag = FLAG_OF_FIELD.get(str(field), str(field))
        where = flag
        if flag == "--lora" and rest:  # loras[i] or loras[i].scale: the i-th --lora
            where += f" #{rest[0] + 1}" + "".join(f" {part}" for part in rest[1:])
        lines.append(f"{where} {error.get('input')!r}: {error['msg']}")
    return "; ".join(lines)


def takes_loras(options: EngineOptions) -> bool:
    """Whether the engine these options load accepts request LoRAs (known before loading it)."""
    loras = getattr(options, "loras", None)
    return isinstance(loras, LoraSettings) and loras.slots > 0


def run_upscale(args: argparse.Namespace) -> int:
    from predictor.errors import UpscaleError, ValidationFailed

    try:
        return _upscale(args)
    except UsageError as exc:
        print(f"chrono-upscaler upscale: error: {exc}", file=sys.stderr)
    except ValidationFailed as exc:
        print(f"chrono-upscaler upscale: error: {describe_errors(exc.errors)}", file=sys.stderr)
    except (UpscaleError, OSError) as exc:
        print(f"chrono-upscaler upscale: error: {exc}", file=sys.stderr)
    return 2


def _upscale(args: argparse.Namespace) -> int:
    from predictor.api.errors import parse_request
    from predictor.engines import load_engine
    from predictor.journey import check_supported, process_image
    from predictor.plan import resolve_seed

    options = engine_options(args)  # a bad engine flag exits here, naming the flag
    if getattr(options, "compile", False) is None:  # one image: compiling would cost more
        options = dataclasses.replace(options, compile=False)
    check_paths(args)
    request = parse_request(
        {
            "image_url": str(args.input),
            "upscale_factor": args.factor,
            "output_format": output_format(args.output, args.format),
            "seed": args.seed,
            "loras": [_lora_item(item) for item in args.lora],
        },
        loc_prefix=(),
    )
    if request.loras and not takes_loras(options):
        raise UsageError(
            f"--lora: the {options.engine} engine takes no LoRAs "
            "(the chronoedit engine does, with --lora-slots ≥ 1)"
        )
    data = args.input.read_bytes()
    try:
        engine = load_engine(options)
    except ValueError as exc:  # what the engine refuses in its options, e.g. cuda without a GPU
        raise UsageError(f"--engine {options.engine}: {exc}") from None
    check_supported(request, engine)  # the same refusal the server gives
    with Progress(f"{options.engine} ×{args.factor:g}") as progress:
        processed = process_image(
            data, request, resolve_seed(request.seed), engine, Settings(), progress.update
        )
    args.output.write_bytes(processed.encoded.data)
    (width, height), encoded = processed.input_size, processed.encoded
    print(f"{args.input} {width}×{height} → {args.output} {encoded.width}×{encoded.height}")
    return 0


class Progress:
    """Progress over tiles or steps on stderr: a tqdm bar on a terminal, plain lines elsewhere.

    The bar opens at the first report, once the total and unit are known (a bar opened before
    prints a stray ``0tile`` line), with its clock set to when the work began, so the first rate
    is a real one. In a log (not a terminal) a bar's carriage returns pile every redraw onto one
    line; there each report is a line of its own, at most one a second, and always the last.
    """

    LOG_INTERVAL_S = 1.0

    def __init__(self, desc: str, stream: Any = None) -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.bar: Any = None
        self.logged_at: float | None = None

    def update(self, done: int, total: int, unit: str) -> None:
        if self.terminal:
            self._draw(done, total, unit)
            return
        now = time.monotonic()
        recent = self.logged_at is not None and now - self.logged_at < self.LOG_INTERVAL_S
        if done < total and recent:
            return
        self.logged_at = now
        rate = done / max(now - self.started, 1e-9)
        print(
            f"{self.desc}: {done}/{total} {unit}s, {now - self.started:.1f} s, {rate:.2f} {unit}/s",
            file=self.stream,
            flush=True,
        )

    def _draw(self, done: int, total: int, unit: str) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.unit != unit:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, unit=unit, desc=self.desc, file=self.stream)
            # the rate counts from the start of the work, not from the bar's opening (tqdm's clock
            # is its own: move its start back by the time the work has run)
            self.bar.start_t -= time.monotonic() - self.started
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        from predictor.server import serve

        serve(settings_from_args(args))
        return 0
    if args.command == "make-tiny-model":
        from predictor.dev.tiny_model import run  # a dev tool, loaded only here

        return run(args)
    return run_upscale(args)


if __name__ == "__main__":
    sys.exit(main())
