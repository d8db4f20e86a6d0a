"""manifests/loadtest/job.yaml: a valid Job (Kubernetes' schema, strict), run once, non-root,
with resources, and with arguments the load test's own command line accepts."""

from __future__ import annotations

import copy
import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from loadtest import cli
from tests.conftest import ROOT

JOB = ROOT / "manifests" / "loadtest" / "job.yaml"


@pytest.fixture(scope="module")
def job() -> dict:
    (document,) = list(yaml.safe_load_all(JOB.read_text()))
    return document


@pytest.mark.parametrize("version", ["1.30.0", "1.35.0", kubernetes_validate.latest_version()])
def test_loadtest_job_is_valid_kubernetes(job: dict, version: str) -> None:
    kubernetes_validate.validate(job, version, strict=True)


def test_loadtest_job_validation_is_strict(job: dict) -> None:
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["commandLine"] = ["typo"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.35.0", strict=True)


def test_loadtest_job_runs_once_as_non_root_with_resources(job: dict) -> None:
    spec = job["spec"]
    assert job["kind"] == "Job"
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert container["resources"]["limits"]["memory"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/results", "/tmp"} <= mounts


def test_loadtest_job_runs_the_same_command(job: dict) -> None:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"ghcr.io/chrono-upscaler/predictor:{version}-cpu"
    assert container["command"] == ["python", "-m", "loadtest"]
    args = cli.build_parser().parse_args(container["args"])
    assert args.command == "run"
    assert str(args.out) == "/results"
    assert re.fullmatch(r"http://[a-z0-9-]+-predictor\.[a-z0-9-]+\.svc\.cluster\.local", args.url)
    # the key comes from the variable the command line reads, out of an optional Secret
    (key,) = [env for env in container["env"] if env["name"] == "FAL_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["optional"] is True
    text = JOB.read_text()
    assert "http://<name>-predictor.<namespace>.svc.cluster.local" in text  # how to set --url
