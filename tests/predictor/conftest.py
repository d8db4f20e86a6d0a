"""Fixtures for the chronoedit engine: the tiny random model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny ChronoEdit model (with a never-flagging safety checker), built by the real CLI."""
    from predictor.cli import main

    directory = tmp_path_factory.mktemp("chronoedit") / "tiny"
    assert main(["make-tiny-model", str(directory), "--with-safety-checker"]) == 0
    return directory


@pytest.fixture(scope="session")
def flagging_checker_dir(tmp_path_factory) -> Path:
    """A tiny safety checker whose thresholds flag every image (the real checker code path)."""
    from predictor.tiny_model import build_safety_checker

    return build_safety_checker(tmp_path_factory.mktemp("checker") / "flag-all", True)
