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


def _predictor_knows(flag: str) -> bool:
    return any(flag in action.option_strings for action in _serve_parser()._actions)


def _serve_parser() -> Any:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["serve"]


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
    args = list(container["args"])
    for flag in ("--lora-catalog", "--shutdown-grace"):
        if flag in args and not _predictor_knows(flag):
            index = args.index(flag)  # checked apart below; the rest must parse
            del args[index : index + 2]
    return cli.settings_from_args(cli.build_parser().parse_args(args))


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


WITH_LORAS = [case for case in CASES if case[2].get("loras")]


@pytest.mark.parametrize(("case", "owner", "raw"), WITH_LORAS, ids=[c[0] for c in WITH_LORAS])
def test_operator_predictor_knows_the_lora_catalog_flag(
    case: str, owner: Owner, raw: dict[str, Any]
) -> None:
    assert "--lora-catalog" in container_of(owner, raw)["args"]
    if not _predictor_knows("--lora-catalog"):
        pytest.xfail("the predictor has no --lora-catalog yet: a spec with loras cannot start")


@pytest.mark.parametrize(("case", "owner", "raw"), CASES, ids=[c[0] for c in CASES])
def test_operator_predictor_knows_the_shutdown_grace_flag(
    case: str, owner: Owner, raw: dict[str, Any]
) -> None:
    args = container_of(owner, raw)["args"]
    spec = parse_spec(raw, name=owner.name)
    assert args[args.index("--shutdown-grace") + 1] == str(spec.shutdown_grace)
    if not _predictor_knows("--shutdown-grace"):
        pytest.xfail("the predictor has no --shutdown-grace yet: the pods it runs in cannot start")
