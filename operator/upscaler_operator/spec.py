"""An UpscalerDeployment's spec, checked and defaulted, as a typed model (or a list of errors).

The CRD's schema runs first (``openapi.normalize``: the same defaults and checks as the API
server), then the CRD's CEL rules, mirrored here with the same messages, then what no schema can
say (``uris``). Each error names its field, e.g.
``spec.loras[1].uri: unsupported scheme 'ftp'; expected hf://owner/repo/file.safetensors or
http(s)://``; the reconcile puts them in the Ready condition instead of retrying.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from upscaler_operator import openapi, uris
from upscaler_operator.crd import spec_schema

#: the upscaler LoRA when spec.model.upscalerLora is left out (chronoedit)
DEFAULT_UPSCALER_LORA = "hf://nvidia/ChronoEdit-14B-Diffusers-Upscaler-Lora"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
_CHRONOEDIT_MODEL_FIELDS = ("storageUri", "upscalerLora", "distillLora")
MAX_NAME_LENGTH = 45
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MESSAGE = (
    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
    "(it names the InferenceService and its Knative revisions)"
)


class InvalidSpec(ValueError):
    """The spec cannot be deployed; ``errors`` name each offending field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Lora:
    name: str
    uri: str


@dataclass(frozen=True)
class ModelSpec:
    storage_uri: str | None = None
    upscaler_lora: str | None = None
    distill_lora: str | None = None
    dtype: str = "bfloat16"
    sr_model: str | None = None


@dataclass(frozen=True)
class GpuSpec:
    count: int = 1
    resource_name: str = DEFAULT_GPU_RESOURCE
    product_selector: str | None = None


@dataclass(frozen=True)
class ScalingSpec:
    mode: str = "Serverless"
    min_replicas: int = 0
    max_replicas: int = 1
    target_concurrency: int = 1
    target_cpu_utilization: int = 80
    scale_to_zero_grace_period: str | None = None


@dataclass(frozen=True)
class PricingSpec:
    gpu_hourly_usd: float | None = None
    cpu_hourly_usd: float | None = None


@dataclass(frozen=True)
class PredictorSpec:
    image: str | None = None
    image_pull_policy: str | None = None
    service_account_name: str | None = None
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DefaultsSpec:
    num_inference_steps: int | None = None
    output_format: str | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    engine: str
    model: ModelSpec = field(default_factory=ModelSpec)
    loras: tuple[Lora, ...] = ()
    gpu: GpuSpec | None = None
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    pricing: PricingSpec = field(default_factory=PricingSpec)
    predictor: PredictorSpec = field(default_factory=PredictorSpec)
    defaults: DefaultsSpec = field(default_factory=DefaultsSpec)
    request_timeout_seconds: int = 300

    @property
    def gpus(self) -> GpuSpec | None:
        """GPUs per replica: what spec.gpu says, one nvidia.com/gpu for chronoedit without it."""
        if self.engine != "chronoedit":
            return None
        return self.gpu or GpuSpec()


def name_errors(name: Any) -> list[str]:
    """The CRD's root CEL rule on metadata.name."""
    ok = isinstance(name, str) and _NAME.match(name) and len(name) <= MAX_NAME_LENGTH
    return [] if ok else [NAME_MESSAGE]


def cross_field_errors(spec: Mapping[str, Any]) -> list[str]:
    """The CRD's CEL rules on a defaulted spec, with the CRD's messages."""
    errors: list[str] = []
    engine, model = spec.get("engine"), spec.get("model", {})
    if engine == "chronoedit" and "storageUri" not in model:
        errors.append("spec.model.storageUri is required for the chronoedit engine")
    if engine == "sr" and spec.get("loras"):
        errors.append("spec.loras: the sr engine takes no LoRAs")
    if engine == "sr" and "gpu" in spec:
        errors.append("spec.gpu: the sr engine runs on CPU; remove spec.gpu")
    if engine == "sr" and any(key in model for key in _CHRONOEDIT_MODEL_FIELDS):
        errors.append(
            "spec.model: storageUri, upscalerLora and distillLora apply to the chronoedit "
            "engine only"
        )
    if engine == "chronoedit" and "srModel" in model:
        errors.append("spec.model.srModel applies to the sr engine only")
    scaling = spec.get("scaling", {})
    if scaling.get("minReplicas", 0) > scaling.get("maxReplicas", 1):
        errors.append("spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas")
    if scaling.get("mode") == "RawDeployment":
        if scaling.get("minReplicas", 0) < 1:
            errors.append(
                "spec.scaling.minReplicas must be at least 1 in RawDeployment mode "
                "(scale to zero needs Serverless)"
            )
        if "scaleToZeroGracePeriod" in scaling:
            errors.append("spec.scaling.scaleToZeroGracePeriod applies to Serverless mode only")
    return errors


def uri_errors(spec: Mapping[str, Any]) -> list[str]:
    """Storage and catalog URIs the storage initializer or the predictor could not fetch."""
    errors: list[str] = []
    model = spec.get("model", {})
    if "storageUri" in model:
        errors += uris.storage_uri_errors(model["storageUri"], "spec.model.storageUri")
    for key in ("upscalerLora", "distillLora"):
        if key in model:
            errors += uris.lora_source_errors(model[key], f"spec.model.{key}")
    for index, lora in enumerate(spec.get("loras", [])):
        errors += uris.catalog_uri_errors(lora["uri"], f"spec.loras[{index}].uri")
    return errors


def parse_spec(raw: Any, *, name: str) -> DeploymentSpec:
    """The typed, defaulted spec; raises InvalidSpec listing every problem found."""
    errors = name_errors(name)
    normalized, schema_errors = openapi.normalize(raw, spec_schema(), "spec")
    errors += schema_errors
    if not schema_errors:  # the later rules assume the schema's types
        errors += cross_field_errors(normalized) + uri_errors(normalized)
    if errors:
        raise InvalidSpec(errors)
    return _typed(normalized)


def _typed(spec: Mapping[str, Any]) -> DeploymentSpec:
    model, scaling = spec.get("model", {}), spec["scaling"]
    pricing, predictor = spec.get("pricing", {}), spec.get("predictor", {})
    defaults, gpu = spec.get("defaults", {}), spec.get("gpu")
    return DeploymentSpec(
        engine=spec["engine"],
        model=ModelSpec(
            storage_uri=model.get("storageUri"),
            upscaler_lora=model.get("upscalerLora"),
            distill_lora=model.get("distillLora"),
            dtype=model.get("dtype", "bfloat16"),
            sr_model=model.get("srModel"),
        ),
        loras=tuple(Lora(name=item["name"], uri=item["uri"]) for item in spec.get("loras", [])),
        gpu=None
        if gpu is None
        else GpuSpec(
            count=gpu["count"],
            resource_name=gpu["resourceName"],
            product_selector=gpu.get("productSelector"),
        ),
        scaling=ScalingSpec(
            mode=scaling["mode"],
            min_replicas=scaling["minReplicas"],
            max_replicas=scaling["maxReplicas"],
            target_concurrency=scaling["targetConcurrency"],
            target_cpu_utilization=scaling["targetCpuUtilization"],
            scale_to_zero_grace_period=scaling.get("scaleToZeroGracePeriod"),
        ),
        pricing=PricingSpec(
            gpu_hourly_usd=pricing.get("gpuHourlyUsd"), cpu_hourly_usd=pricing.get("cpuHourlyUsd")
        ),
        predictor=PredictorSpec(
            image=predictor.get("image"),
            image_pull_policy=predictor.get("imagePullPolicy"),
            service_account_name=predictor.get("serviceAccountName"),
            resources=predictor.get("resources", {}),
            node_selector=predictor.get("nodeSelector", {}),
            tolerations=predictor.get("tolerations", []),
            env=predictor.get("env", []),
        ),
        defaults=DefaultsSpec(
            num_inference_steps=defaults.get("numInferenceSteps"),
            output_format=defaults.get("outputFormat"),
        ),
        request_timeout_seconds=spec["requestTimeoutSeconds"],
    )
