"""``chrono-upscaler``: serve the fal API, or upscale a file in process."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from predictor.config import Settings
from predictor.engines.options import MAX_LORAS
from predictor.flags import (
    add_engine_options,
    add_serve_options,
    engine_options,
    settings_from_args,
)

__all__ = ["build_parser", "main", "settings_from_args"]
FORMAT_BY_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chrono-upscaler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the fal-compatible API on KServe",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_options(serve)

    upscale = commands.add_parser("upscale", help="upscale one image file in this process")
    upscale.add_argument("input", type=Path)
    upscale.add_argument("-o", "--output", type=Path, required=True)
    upscale.add_argument("--factor", type=float, default=2.0, help="1 to 4")
    upscale.add_argument(
        "--format",
        choices=("jpeg", "png", "webp"),
        default=None,
        help="default: from the output file's extension, else jpeg",
    )
    upscale.add_argument("--seed", type=int, default=None)
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
    tiny.add_argument("--seed", type=int, default=0)
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


def run_upscale(args: argparse.Namespace) -> int:
    from predictor.api.errors import parse_request
    from predictor.engines import load_engine
    from predictor.errors import UpscaleError
    from predictor.journey import check_supported, process_image
    from predictor.plan import resolve_seed

    output_format = args.format or FORMAT_BY_SUFFIX.get(args.output.suffix.lower(), "jpeg")
    options = engine_options(args)
    if getattr(options, "compile", False) is None:  # one image: compiling would cost more
        options = dataclasses.replace(options, compile=False)
    try:
        request = parse_request(
            {
                "image_url": str(args.input),
                "upscale_factor": args.factor,
                "output_format": output_format,
                "seed": args.seed,
                "loras": [_lora_item(item) for item in args.lora],
            },
            loc_prefix=(),
        )
        data = args.input.read_bytes()
        engine = load_engine(options)
        check_supported(request, engine)  # the same refusal the server gives
        with _ProgressBar(f"{options.engine} ×{args.factor:g}") as bar:
            processed = process_image(
                data, request, resolve_seed(request.seed), engine, Settings(), bar.update
            )
    except (UpscaleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.write_bytes(processed.encoded.data)
    (width, height), encoded = processed.input_size, processed.encoded
    print(f"{args.input} {width}×{height} → {args.output} {encoded.width}×{encoded.height}")
    return 0


class _ProgressBar:
    """A tqdm bar opened at the first report, once the total and unit are known (a bar opened
    before prints a stray ``0tile`` line)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def update(self, done: int, total: int, unit: str) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.unit != unit:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, unit=unit, desc=self.desc)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> _ProgressBar:
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
