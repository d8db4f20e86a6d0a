"""Which predictor image a deployment runs: the operator's CUDA image for GPU deployments, its
CPU-only image for the rest, a CPU-only image on GPUs refused, the image shown in the status."""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator.__main__ import build_parser, config_from_args
from upscaler_operator.builders import (
    DEFAULT_PREDICTOR_CPU_IMAGE,
    DEFAULT_PREDICTOR_IMAGE,
    BuildOptions,
    build_inference_service,
    image_errors,
    image_variant,
    predictor_image,
)
from upscaler_operator.crd import load_crd
from upscaler_operator.spec import InvalidSpec, parse_spec

from tests.operator.test_operator_builders import CHRONOEDIT, OWNER, SR, merged
from tests.operator.test_operator_reconcile import (
    CR,
    ISVC,
    FakeKube,
    deployment,
    reconciler,
    run,
)

OPTIONS = BuildOptions(
    predictor_image="registry.example.com/ml/predictor:2.0",
    predictor_cpu_image="registry.example.com/ml/predictor:2.0-cpu",
)


def container_image(spec: dict[str, Any], options: BuildOptions = OPTIONS) -> str:
    child = build_inference_service(OWNER, parse_spec(spec, name="upscaler"), options)
    (container,) = child.manifest["spec"]["predictor"]["containers"]
    return container["image"]


def test_operator_defaults_are_the_two_variants_of_one_build() -> None:
    assert DEFAULT_PREDICTOR_CPU_IMAGE == DEFAULT_PREDICTOR_IMAGE + "-cpu"
    assert BuildOptions().predictor_cpu_image == DEFAULT_PREDICTOR_CPU_IMAGE


def test_operator_picks_the_image_of_the_deployments_accelerator() -> None:
    assert container_image(CHRONOEDIT) == "registry.example.com/ml/predictor:2.0"
    assert container_image(SR) == "registry.example.com/ml/predictor:2.0-cpu"
    custom = merged(SR, predictor={"image": "registry.example.com/mine:1"})
    assert container_image(custom) == "registry.example.com/mine:1"


@pytest.mark.parametrize(
    ("image", "variant"),
    [
        ("registry.example.com/ml/predictor:2.0", "cuda"),
        ("registry.example.com/ml/predictor:2.0-cpu", "cpu"),
        ("other.example.com/p:0.1.0-cpu", "cpu"),
        ("other.example.com:5000/p:0.1.0-cpu@sha256:" + "0" * 64, "cpu"),
        ("other.example.com:5000/p-cpu", None),  # a port and a name are not a tag
        ("other.example.com/p:0.1.0", None),  # not the operator's: unknown
    ],
)
def test_operator_knows_an_images_variant_only_where_it_can(image: str, variant: str) -> None:
    assert image_variant(image, OPTIONS) == variant


def test_operator_refuses_a_cpu_only_image_on_a_gpu_deployment() -> None:
    spec = parse_spec(
        merged(CHRONOEDIT, predictor={"image": "registry.example.com/ml/predictor:2.0-cpu"}),
        name="upscaler",
    )
    (error,) = image_errors(spec, OPTIONS)
    assert error.startswith(
        "spec.predictor.image: registry.example.com/ml/predictor:2.0-cpu is the CPU-only "
        "predictor image, but this deployment asks for 2 nvidia.com/gpu per replica"
    )
    # the operator's own default misconfigured with the CPU tag (what docs once advised)
    wrong = BuildOptions(predictor_image="r.example/p:0.1.0-cpu", predictor_cpu_image="r/p:c")
    (error,) = image_errors(parse_spec(CHRONOEDIT, name="upscaler"), wrong)
    assert error.startswith("the operator's PREDICTOR_IMAGE: r.example/p:0.1.0-cpu is the CPU-only")
    # the CUDA image on a CPU deployment is only larger: allowed
    big = merged(SR, predictor={"image": "registry.example.com/ml/predictor:2.0"})
    assert image_errors(parse_spec(big, name="upscaler"), OPTIONS) == []
    assert image_errors(parse_spec(CHRONOEDIT, name="upscaler"), OPTIONS) == []


def test_operator_reconcile_refuses_the_cpu_image_on_gpus_and_shows_the_image() -> None:
    kube = FakeKube()
    operator = reconciler(
        kube, predictor_image="r.example/p:3", predictor_cpu_image="r.example/p:3-cpu"
    )
    assert run(operator, kube, deployment()).outcome == "ok"
    assert kube.objects[CR]["status"]["predictorImage"] == "r.example/p:3"
    kube.writes.clear()
    result = run(operator, kube, deployment(predictor={"image": "r.example/p:3-cpu"}))
    assert result.outcome == "invalid"
    assert [w for w in kube.writes if not w[1].endswith("/status")] == []  # children kept
    status = kube.objects[CR]["status"]
    ready = {c["type"]: c for c in status["conditions"]}["Reconciled"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "r.example/p:3-cpu is the CPU-only predictor image" in ready["message"]
    assert status["predictorImage"] == "r.example/p:3"  # what still runs
    assert kube.objects[ISVC]["spec"]["predictor"]["containers"][0]["image"] == "r.example/p:3"


def test_operator_sr_deployment_runs_the_cpu_image_from_the_environment() -> None:
    """The operator's flags read the images from the env the chart sets."""
    environ = {"PREDICTOR_IMAGE": "r.example/p:4", "PREDICTOR_CPU_IMAGE": "r.example/p:4-cpu"}
    config = config_from_args(build_parser(environ).parse_args([]))
    kube = FakeKube()
    operator = reconciler(
        kube,
        predictor_image=config.predictor_image,
        predictor_cpu_image=config.predictor_cpu_image,
    )
    body = deployment(engine="sr", model={}, scaling={"mode": "RawDeployment", "minReplicas": 1})
    assert run(operator, kube, body).outcome == "ok"
    assert kube.objects[CR]["status"]["predictorImage"] == "r.example/p:4-cpu"


def test_operator_crd_shows_the_image_in_wide_output() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Image"]["jsonPath"] == ".status.predictorImage"
    assert columns["Cost/h"].get("priority") == 1  # -o wide, as the docs say


def test_operator_refuses_hub_loras_with_the_hub_turned_off() -> None:
    spec = merged(
        CHRONOEDIT,
        loras=[
            {"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"},
            {"name": "ink", "uri": "https://loras.example.com/ink.safetensors"},
        ],
        predictor={"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
    )
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(spec, name="upscaler")
    assert caught.value.errors == [
        "spec.loras[0].uri: hf://nvidia/Paint-Lora/paint.safetensors is fetched from the Hugging "
        "Face Hub when a request names it, but spec.predictor.env sets HF_HUB_OFFLINE; drop one "
        "of the two"
    ]
    spec["predictor"]["env"] = [{"name": "HF_HUB_OFFLINE", "value": "0"}]
    parse_spec(spec, name="upscaler")  # the hub on: fine
    assert predictor_image(parse_spec(spec, name="upscaler"), OPTIONS).endswith(":2.0")
