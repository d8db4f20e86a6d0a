"""The served OpenAPI document is true: schemathesis, run against the live server (its examples
and fuzzing phases, every response check), finds no server error and nothing undeclared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_the_document_lists_only_served_routes(guarded_server) -> None:
    paths = httpx.get(f"{guarded_server.url}/openapi.json").json()["paths"]
    assert "/v2/models/{model_name}/infer" not in paths
    assert not [path for path in paths if "/repository/" in path or ":explain" in path]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    fal = paths["/fal-ai/chrono-edit-lora-gallery/upscaler"]["post"]["responses"]
    assert {"400", "401", "413", "422", "429", "503", "504"} <= set(fal)


def test_schemathesis_finds_nothing(guarded_server, tmp_path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{guarded_server.url}/openapi.json",
        "--phases",
        "examples,fuzzing",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--max-time",
        "60",  # a bounded run: the fuzzing phase stops here
        "--seed",
        "19",
        "--request-timeout",
        "30",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    guarded_server.assert_alive()
