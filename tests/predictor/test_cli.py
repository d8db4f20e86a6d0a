"""The command line: in-process upscale, and the example request ``make run`` prints."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from predictor.cli import Progress, build_parser, main
from predictor.dev.example import curl_command, write_example
from tests.conftest import ROOT, encode, photo_crop


def test_upscale_command_writes_the_planned_size(tmp_path, capsys) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(encode(photo_crop(41, 23), "JPEG"))
    target = tmp_path / "out.webp"
    assert main(["upscale", str(source), "-o", str(target), "--factor", "1.5"]) == 0
    with Image.open(target) as result:
        assert result.format == "WEBP" and result.size == (62, 34)
    assert "41×23" in capsys.readouterr().out
    png = tmp_path / "out.bin"
    assert main(["upscale", str(source), "-o", str(png), "--format", "png"]) == 0
    with Image.open(png) as result:
        assert result.format == "PNG" and result.size == (82, 46)


def test_upscale_command_errors(tmp_path, capsys) -> None:
    source = tmp_path / "in.txt"
    source.write_text("not an image")
    assert main(["upscale", str(source), "-o", str(tmp_path / "o.png")]) == 2
    assert "JPEG, PNG, WebP" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]) == 2
    image = tmp_path / "in.png"
    image.write_bytes(encode(photo_crop(8, 8)))
    assert main(["upscale", str(image), "-o", str(tmp_path / "o.png"), "--factor", "9"]) == 2


def test_upscale_refuses_what_the_engine_cannot_honour(tmp_path, capsys) -> None:
    """The same check as the server's: ``--lora`` on ``sr`` is an error, not silently ignored."""
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(encode(photo_crop(16, 16)))
    assert main(["upscale", str(source), "-o", str(target), "--lora", "x.safetensors"]) == 2
    assert "--lora: the sr engine takes no LoRAs" in capsys.readouterr().err
    assert not target.exists()


def test_upscale_progress_bar_opens_once_the_total_is_known(tmp_path, capsys) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(encode(photo_crop(16, 16)))
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png")]) == 0
    err = capsys.readouterr().err
    assert "1/1" in err
    assert ": 0tile [" not in err  # a bar opened without its total prints this stray line


def test_bad_engine_option_names_its_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "upscale", "x.png", "-o", "y.png", "--tile-size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tile-size: tile_size must be at least 1, got 0" in result.stderr


def test_module_entry_point_matches_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "serve" in result.stdout and "upscale" in result.stdout


def test_example_request_is_accepted(server, tmp_path) -> None:
    request_path = write_example(tmp_path, size=64)
    assert f"-d @{request_path}" in curl_command(server.url, request_path)
    response = httpx.post(
        f"{server.url}/fal-ai/chrono-edit-lora-gallery/upscaler",
        content=request_path.read_bytes(),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert (image["width"], image["height"]) == (128, 128)
    assert json.loads(request_path.read_text())["output_format"] == "png"


#: the line the sr engine logs once it is loaded: its absence shows a refusal came before the work
ENGINE_LOADED = "sr engine: waifu2x"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``chrono-upscaler`` as a user runs it: a process of its own, stderr a pipe (not a tty)."""
    return subprocess.run(
        [sys.executable, "-m", "predictor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    source = tmp_path / "in.png"
    source.write_bytes(encode(photo_crop(48, 32)))
    return source


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--factor", "5"], "--factor 5.0: Input should be less than or equal to 4"),
        (["--seed", "-1"], "--seed -1: Input should be greater than or equal to 0"),
        (["--lora", "a:9"], "--lora #1 scale 9.0: Input should be less than or equal to 4"),
    ],
)
def test_upscale_names_the_flag_the_value_and_what_is_allowed(photo, flags, said) -> None:
    result = cli("upscale", str(photo), "-o", str(photo.with_name("out.png")), *flags)
    assert result.returncode == 2
    assert result.stderr.strip() == f"chrono-upscaler upscale: error: {said}"


def test_upscale_checks_the_output_path_before_any_work(photo, tmp_path) -> None:
    result = cli("upscale", str(photo), "-o", str(tmp_path / "missing" / "dir" / "x.png"))
    assert result.returncode == 2
    assert f"directory {tmp_path / 'missing' / 'dir'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr and ENGINE_LOADED not in result.stderr
    result = cli("upscale", str(photo), "-o", str(tmp_path))
    assert result.returncode == 2 and "is a directory" in result.stderr
    result = cli("upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli(
        "upscale", str(photo), "-o", str(tmp_path / "x.png"),
        "--engine", "chronoedit", "--model-dir", str(tmp_path / "no-model"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"'{tmp_path / 'no-model'}' does not exist" in result.stderr


def test_upscale_takes_the_format_from_the_extension_or_refuses_with_the_list(
    photo, tmp_path
) -> None:
    result = cli("upscale", str(photo), "-o", str(tmp_path / "x.tiff"))
    assert result.returncode == 2 and not (tmp_path / "x.tiff").exists()
    assert "cannot tell the output format from '.tiff'" in result.stderr
    assert ".jpg, .jpeg, .png, .webp" in result.stderr and "--format" in result.stderr
    result = cli("upscale", str(photo), "-o", str(tmp_path / "x.png"), "--format", "jpeg")
    assert result.returncode == 2 and "the extension says png, --format says jpeg" in result.stderr
    for name, format_ in (("x.PNG", "PNG"), ("x.jpeg", "JPEG"), ("x.webp", "WEBP")):
        result = cli("upscale", str(photo), "-o", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / name) as written:
            assert written.format == format_


def test_upscale_refuses_a_lora_on_sr_before_loading_the_engine(photo) -> None:
    result = cli("upscale", str(photo), "-o", str(photo.with_name("o.png")), "--lora", "x")
    assert result.returncode == 2
    assert "--lora: the sr engine takes no LoRAs" in result.stderr
    assert ENGINE_LOADED not in result.stderr


def test_upscale_progress_in_a_log_is_one_line_per_report_with_a_true_rate(photo) -> None:
    result = cli("upscale", str(photo), "-o", str(photo.with_name("o.png")))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # no redraws piled onto one line
    reports = re.findall(r"sr ×2: (\d+)/(\d+) tiles, ([\d.]+) s, ([\d.]+) tile/s", result.stderr)
    assert reports and reports[-1][0] == reports[-1][1]  # the last report is the whole
    for done, _, seconds, rate in reports:  # the rate is the count over the time printed (to 0.1 s)
        low, high = max(float(seconds) - 0.05, 0.0), float(seconds) + 0.05
        assert float(rate) * low <= int(done) <= float(rate) * high + 0.01


def test_progress_bar_on_a_terminal_counts_its_rate_from_the_start_of_the_work() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress("sr ×2", stream) as progress:
        progress.started = time.monotonic() - 2.0  # the work began 2 s ago
        progress.update(4, 4, "tile")
    drawn = stream.getvalue()
    assert "4/4" in drawn
    rate = float(re.findall(r"([\d.]+)tile/s", drawn)[-1])
    assert 1.0 <= rate <= 2.0  # 4 tiles in about 2 s, not 4 tiles in the microseconds since


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_every_flag_and_argument_has_help() -> None:
    for name, command in _subparsers(build_parser()).items():
        for action in _options(command):
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}"


def test_help_shows_each_default_once_and_no_markup() -> None:
    top = cli("--help")
    assert top.returncode == 0 and "``" not in top.stdout
    for command in ("serve", "upscale", "make-tiny-model"):
        result = cli(command, "--help")
        assert result.returncode == 0
        text = re.sub(r"\s+", " ", result.stdout)
        # one flag's help runs from its name to the next flag's
        for block in re.split(r" (?=--?[a-z][-a-z]* )", text):
            assert block.count("(default") <= 1, block
            assert "(default: None)" not in block and "(default: False)" not in block, block
    serve = re.sub(r"\s+", " ", cli("serve", "--help").stdout)
    assert "sr engine: input tile side (default: the model's own) --" in serve
    assert "visible, else the CPU (default: auto)" in serve
