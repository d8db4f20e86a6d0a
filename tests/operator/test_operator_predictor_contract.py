"""The contract with the predictor: its own command line accepts what the operator builds.

Every InferenceService variant and example is built, its container's arguments are parsed by
``chrono-upscaler``'s real parser, with the container's environment as the pod would get it
(Secrets replaced by stand-in values), and turned into the predictor's Settings.
"""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator.builders import BuildOptions, Owner, build_children
from upscaler_operator.spec import parse_spec

from tests.operator.conftest import load_examples
from tests.operator.test_operator_builders import OWNER, VARIANTS

cli = pytest.importorskip("predictor.cli", reason="the predictor package parses the arguments")

#: stand-ins for what the pod would read from Secrets, by key
SECRET_VALUES = {"url": "redis://:stand-in@redis.queue.svc:6379/0"}
KEDA = BuildOptions(predictor_image="registry.example.com/predictor:1", keda=True)


def container_of(owner: Owner, raw: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(raw, name=owner.name)
    (isvc,) = [c for c in build_children(owner, spec, KEDA) if c.kind == "InferenceService"]
    return isvc.manifest["spec"]["predictor"]["containers"][0]


def settings_for(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("UPSCALER_REDIS_URL", "AWS_ENDPOINT_URL", "UPSCALER_GPU_HOURLY_USD"):
        monkeypatch.delenv(name, raising=False)
    for item in container.get("env", []):
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
        else:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            monkeypatch.setenv(item["name"], SECRET_VALUES.get(key, "stand-in"))
    return cli.settings_from_args(cli.build_parser().parse_args(container["args"]))


CASES = [(name, OWNER, raw) for name, raw in sorted(VARIANTS.items())] + [
    (
        filename,
        Owner(body["metadata"]["name"], body["metadata"]["namespace"], "uid"),
        body["spec"],
    )
    for filename, body in load_examples()
]


@pytest.mark.parametrize(("case", "owner", "raw"), CASES, ids=[c[0] for c in CASES])
def test_operator_predictor_parses_what_the_operator_builds(
    case: str, owner: Owner, raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = container_of(owner, raw)
    settings = settings_for(container, monkeypatch)
    spec = parse_spec(raw, name=owner.name)
    assert settings.model_name == owner.name and settings.engine == spec.engine
    assert settings.request_timeout_s == spec.request_timeout_seconds
    assert settings.shutdown_grace_s == spec.shutdown_grace
    if raw.get("loras"):  # the catalog ConfigMap's mount, read by the chronoedit engine
        assert settings.engine_options.loras.catalog is not None
    if spec.defaults.num_inference_steps is not None:
        assert settings.request_defaults["num_inference_steps"] == (
            spec.defaults.num_inference_steps
        )
    if spec.queue is None:
        assert settings.redis_url is None
        return
    expected_url = spec.queue.redis.url or SECRET_VALUES["url"]
    assert settings.redis_url == expected_url
    assert settings.redis_prefix == (spec.queue.prefix or f"{owner.namespace}:{owner.name}")
    if spec.queue.max_queued is not None:
        assert settings.max_queued == spec.queue.max_queued
    if spec.queue.lease_seconds is not None:
        assert settings.queue_lease_s == spec.queue.lease_seconds
    s3 = spec.outputs.s3
    assert settings.output_store == (s3.url if s3 is not None else spec.outputs.store)
    if s3 is not None:
        assert settings.s3_endpoint_url == s3.endpoint_url
        assert settings.s3_public_url == s3.public_url


def test_the_pod_outlives_the_predictors_drain() -> None:
    """After ``--shutdown-grace`` the predictor still waits for stopped jobs and for webhooks;
    the margin the operator adds to the pod's grace period must cover both, or the kubelet's
    SIGKILL lands mid-drain and queued requests lose their final status."""
    from upscaler_operator.builders import SHUTDOWN_MARGIN_S

    from predictor.server import STOP_WAIT_S, WEBHOOK_FLUSH_S

    assert SHUTDOWN_MARGIN_S >= STOP_WAIT_S + WEBHOOK_FLUSH_S + 2
