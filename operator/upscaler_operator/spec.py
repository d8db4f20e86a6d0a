"""An UpscalerDeployment's spec, checked and defaulted, as a typed model (or a list of errors).

The CRD's schema runs first (``openapi.normalize``: the same defaults and checks as the API
server), then the CRD's CEL rules, mirrored here with the same messages, then what no schema can
say (``uris``). Each error names its field, e.g.
``spec.loras[1].uri: unsupported scheme 'ftp'; expected hf://owner/repo/file.safetensors or
http(s)://``; the reconcile puts them in the Ready condition instead of retrying.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

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


#: a replica's start, pod created → ready with its weights on the node, when spec.startupSeconds
#: is left out: chronoedit's target with cold compile/prompt caches (docs/operator.md), sr's
DEFAULT_STARTUP_S = {"chronoedit": 120, "sr": 20}
CACHE_NODE_GROUP_MESSAGE = "spec.model.cache.nodeGroup is required when the node cache is enabled"
CACHE_LORA_MESSAGE = (
    "spec.model.cache: KServe's node cache serves the model's one storage URI and no "
    "storageUris beside it; put the LoRAs inside the model and give spec.model.upscalerLora "
    "(and distillLora) as paths relative to it, e.g. upsample_lora_diffusers.safetensors"
)

#: Knative refuses a scale-to-zero-pod-retention-period above its window maximum (1h)
MAX_RETENTION_S = 3600
#: env names KServe's webhook refuses in any predictor container (KServe >= 0.18)
KSERVE_BLOCKED_ENV = ("PYTHONPATH",)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT_S = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
)
_QUANTITY_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{f"{prefix}i": Decimal(1024) ** (power + 1) for power, prefix in enumerate("KMGTPE")},
}


def duration_exact(duration: str) -> Decimal:
    """A Knative/Go-style duration (``300s``, ``10m``, ``1h30m``, ``1.5h``) in seconds."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(value + unit for value, unit in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum((Decimal(value) * _DURATION_UNIT_S[unit] for value, unit in parts), Decimal(0))


def duration_seconds(duration: str) -> int:
    """A duration in whole seconds, rounded up."""
    return math.ceil(duration_exact(duration))


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``500m``, ``8``, ``96Gi``, ``1e3``) as a number; ValueError if not."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _QUANTITY_SUFFIX[suffix]
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"not a quantity: {value!r}") from exc


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
class ModelCache:
    """spec.model.cache: the node-local weight cache, and the start-up cache volume."""

    enabled: bool = False
    node_group: str | None = None
    model_size: str = "80Gi"
    claim_name: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    storage_uri: str | None = None
    upscaler_lora: str | None = None
    distill_lora: str | None = None
    dtype: str = "bfloat16"
    sr_model: str | None = None
    #: chronoedit: torch.compile at start-up (--compile / --no-compile)
    compile: bool = True
    #: chronoedit: the transformer's linear layers, bf16 or fp8 (--precision)
    precision: str = "bf16"
    cache: ModelCache = field(default_factory=ModelCache)


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
    target_queue_length: int = 2
    scale_to_zero_grace_period: str | None = None


@dataclass(frozen=True)
class SecretKey:
    """One key of a Secret in the deployment's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class RedisAddress:
    """Where KEDA finds a Redis: what its redis scaler takes instead of a URL."""

    host: str
    port: int = 6379
    database_index: int = 0
    tls: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RedisSpec:
    """A Redis: a URL without credentials, or a Secret holding the URL (``secret``).

    With a Secret the operator cannot read the URL, so KEDA reads host:port and the credentials
    from the Secret's ``address``, ``username`` and ``password`` keys, and the database index and
    TLS from here.
    """

    url: str | None = None
    secret: SecretKey | None = None
    database_index: int = 0
    tls: bool = False

    def address(self) -> RedisAddress | None:
        """host:port, database and TLS parsed from ``url``; None when the URL is in a Secret."""
        return None if self.url is None else parse_redis_url(self.url)


@dataclass(frozen=True)
class QueueSpec:
    """The shared queue: its Redis, and the predictor's queue settings."""

    redis: RedisSpec
    prefix: str | None = None  # None: <namespace>:<name>
    max_queued: int | None = None
    lease_seconds: int | None = None


@dataclass(frozen=True)
class S3Credentials:
    name: str
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class S3Spec:
    bucket: str
    prefix: str | None = None
    endpoint_url: str | None = None
    public_url: str | None = None
    region: str | None = None
    credentials: S3Credentials | None = None

    @property
    def url(self) -> str:
        """The predictor's ``--output-store`` value: s3://bucket[/prefix]."""
        prefix = (self.prefix or "").strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class OutputsSpec:
    store: str = "memory"  # memory | redis | s3
    s3: S3Spec | None = None


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
    #: spec.startupSeconds; None: the engine's measured default (``startup_seconds``)
    startup_seconds_field: int | None = None
    #: seconds the predictor drains after SIGTERM (--shutdown-grace); None: requestTimeoutSeconds
    shutdown_grace_seconds: int | None = None
    queue: QueueSpec | None = None
    outputs: OutputsSpec = field(default_factory=OutputsSpec)

    @property
    def shutdown_grace(self) -> int:
        """The predictor's --shutdown-grace: spec.shutdownGraceSeconds, else a whole request."""
        if self.shutdown_grace_seconds is not None:
            return self.shutdown_grace_seconds
        return self.request_timeout_seconds

    @property
    def startup_seconds(self) -> int:
        """A replica's measured start (pod created → ready): spec.startupSeconds, else the
        engine's default (``DEFAULT_STARTUP_S``)."""
        if self.startup_seconds_field is not None:
            return self.startup_seconds_field
        return DEFAULT_STARTUP_S[self.engine]

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
    cache = model.get("cache")
    if cache is not None and engine == "sr":
        errors.append("spec.model.cache applies to the chronoedit engine only")
    if cache is not None and cache.get("enabled"):
        if "nodeGroup" not in cache:
            errors.append(CACHE_NODE_GROUP_MESSAGE)
        loras = [model.get("upscalerLora"), model.get("distillLora", "")]
        if loras[0] is None or any("://" in lora for lora in loras if lora is not None):
            errors.append(CACHE_LORA_MESSAGE)
    scaling, queue = spec.get("scaling", {}), spec.get("queue")
    if scaling.get("minReplicas", 0) > scaling.get("maxReplicas", 1):
        errors.append("spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas")
    if scaling.get("mode") == "RawDeployment" and queue is None:
        if scaling.get("minReplicas", 0) < 1:
            errors.append(
                "spec.scaling.minReplicas must be at least 1 in RawDeployment mode without "
                "spec.queue (scale to zero needs Serverless, or KEDA on a shared queue)"
            )
        if "scaleToZeroGracePeriod" in scaling:
            errors.append(
                "spec.scaling.scaleToZeroGracePeriod applies to Serverless mode, or to "
                "RawDeployment with spec.queue (KEDA's cooldown)"
            )
    grace = scaling.get("scaleToZeroGracePeriod")
    serverless = scaling.get("mode", "Serverless") == "Serverless"
    if serverless and grace is not None and duration_exact(grace) > MAX_RETENTION_S:
        errors.append(
            "spec.scaling.scaleToZeroGracePeriod must not exceed 1h in Serverless mode "
            "(Knative's cap on scale-to-zero-pod-retention-period)"
        )
    outputs = spec.get("outputs")
    if outputs is not None and outputs.get("store") == "redis" and queue is None:
        errors.append("spec.outputs.store redis keeps outputs in the queue's Redis: set spec.queue")
    redis = (queue or {}).get("redis")
    if redis is not None:
        if ("url" in redis) == ("secretRef" in redis):
            errors.append("spec.queue.redis: set exactly one of url and secretRef")
        if "@" in redis.get("url", ""):
            errors.append(
                "spec.queue.redis.url must not carry credentials; put the URL in a Secret and "
                "name it in spec.queue.redis.secretRef"
            )
        if "secretRef" not in redis and ("databaseIndex" in redis or "tls" in redis):
            errors.append(
                "spec.queue.redis: databaseIndex and tls go with secretRef only (a url carries "
                "its own: /<db>, rediss://)"
            )
    if outputs is not None and (outputs.get("store") == "s3") != ("s3" in outputs):
        errors.append("spec.outputs.s3 is required for store s3, and only for it")
    return errors


#: env names the operator sets on the predictor container (spec.predictor.env may not reuse them)
REDIS_URL_ENV = "UPSCALER_REDIS_URL"
REDIS_ADDRESS_ENV = "UPSCALER_REDIS_ADDRESS"
REDIS_USERNAME_ENV = "UPSCALER_REDIS_USERNAME"
REDIS_PASSWORD_ENV = "UPSCALER_REDIS_PASSWORD"
S3_ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
S3_SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
S3_REGION_ENV = "AWS_DEFAULT_REGION"


def parse_redis_url(url: str) -> RedisAddress:
    """host, port, database and TLS of ``redis[s]://host[:port][/db]``; ValueError if it is not."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # said without repeating the URL: it holds a password
        raise ValueError("the URL carries credentials; keep it in a Secret")
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: expected redis:// or rediss://")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: takes no query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port if parts.port is not None else 6379
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port") from exc
    if not 1 <= port <= 65535:
        raise ValueError(f"{url!r}: bad port")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the path must be a database number")
    return RedisAddress(
        host=host, port=port, database_index=int(path or 0), tls=parts.scheme == "rediss"
    )


def redis_url_errors(url: str, path: str) -> list[str]:
    """A URL the schema's pattern let through but the predictor or KEDA could not use."""
    if "@" in url:
        return []  # the credentials rule says why
    try:
        parse_redis_url(url)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return []


def default_redis(url: str | None, secret: str | None) -> RedisSpec | None:
    """The operator-wide Redis (UPSCALER_REDIS_URL or UPSCALER_REDIS_SECRET), checked."""
    if url and secret:
        raise ValueError("set one of UPSCALER_REDIS_URL and UPSCALER_REDIS_SECRET, not both")
    if url:
        parse_redis_url(url)  # no credentials in a URL the operator copies into every pod spec
        return RedisSpec(url=url)
    if secret:
        return RedisSpec(secret=SecretKey(name=secret, key="url"))
    return None


def operator_env_names(spec: Mapping[str, Any], default_redis: RedisSpec | None = None) -> set[str]:
    """Environment variables the operator sets for this (defaulted) spec."""
    names: set[str] = set()
    queue = spec.get("queue")
    if queue is not None:
        redis = queue.get("redis")
        from_secret = (
            "secretRef" in redis
            if redis is not None
            else bool(default_redis and default_redis.secret)
        )
        if from_secret:
            names |= {REDIS_URL_ENV, REDIS_ADDRESS_ENV, REDIS_USERNAME_ENV, REDIS_PASSWORD_ENV}
    s3 = (spec.get("outputs") or {}).get("s3") or {}
    if "credentialsSecret" in s3:
        names |= {S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV}
    if "region" in s3:
        names.add(S3_REGION_ENV)
    return names


def env_errors(spec: Mapping[str, Any], default_redis: RedisSpec | None = None) -> list[str]:
    """spec.predictor.env entries that would clash with what the operator sets."""
    reserved = operator_env_names(spec, default_redis)
    return [
        f"spec.predictor.env[{index}].name: {item['name']} is set by the operator "
        "(from spec.queue or spec.outputs)"
        for index, item in enumerate((spec.get("predictor") or {}).get("env", []))
        if item.get("name") in reserved
    ]


def blocked_env_errors(spec: Mapping[str, Any]) -> list[str]:
    """The CRD's CEL rule on spec.predictor.env: names KServe's webhook refuses."""
    env = (spec.get("predictor") or {}).get("env", [])
    if any(item.get("name") in KSERVE_BLOCKED_ENV for item in env):
        return [BLOCKED_ENV_MESSAGE]
    return []


BLOCKED_ENV_MESSAGE = (
    "spec.predictor.env: PYTHONPATH is refused by KServe's admission webhook (KServe >= 0.18); "
    "build the path into the predictor image instead"
)


def resource_errors(spec: Mapping[str, Any]) -> list[str]:
    """Quantities that are not quantities, and a request above its limit (Kubernetes refuses
    the pod; KServe fills a missing limit from its own defaults, so the operator fills them)."""
    errors: list[str] = []
    resources = (spec.get("predictor") or {}).get("resources") or {}
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for kind in ("requests", "limits"):
        for name, value in (resources.get(kind) or {}).items():
            try:
                parsed[kind][name] = quantity(value)
            except ValueError:
                path = f"spec.predictor.resources.{kind}.{name}"
                errors.append(f"{path}: {value!r} is not a quantity")
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            errors.append(
                f"spec.predictor.resources.requests.{name} must not exceed "
                f"spec.predictor.resources.limits.{name}"
            )
    return errors


def offline_lora_errors(spec: Mapping[str, Any]) -> list[str]:
    """Catalog LoRAs the predictor fetches from the Hugging Face Hub per request, in a pod whose
    spec.predictor.env turns the hub off (HF_HUB_OFFLINE): every request naming one would fail."""
    env = (spec.get("predictor") or {}).get("env", [])
    offline = any(
        item.get("name") == "HF_HUB_OFFLINE" and str(item.get("value", "")).lower() in _TRUTHY
        for item in env
    )
    if not offline:
        return []
    return [
        f"spec.loras[{index}].uri: {lora['uri']} is fetched from the Hugging Face Hub when a "
        "request names it, but spec.predictor.env sets HF_HUB_OFFLINE; drop one of the two"
        for index, lora in enumerate(spec.get("loras", []))
        if uris.scheme_of(lora["uri"]) == "hf"
    ]


_TRUTHY = ("1", "true", "yes", "on")


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
    url = ((spec.get("queue") or {}).get("redis") or {}).get("url")
    if url is not None:
        errors += redis_url_errors(url, "spec.queue.redis.url")
    return errors


def parse_spec(raw: Any, *, name: str, default_redis: RedisSpec | None = None) -> DeploymentSpec:
    """The typed, defaulted spec; raises InvalidSpec listing every problem found.

    ``default_redis`` is the operator's own Redis, for a spec.queue that names none.
    """
    errors = name_errors(name)
    normalized, schema_errors = openapi.normalize(raw, spec_schema(), "spec")
    errors += schema_errors
    if not schema_errors:  # the later rules assume the schema's types
        errors += cross_field_errors(normalized) + blocked_env_errors(normalized)
        errors += uri_errors(normalized) + resource_errors(normalized)
        errors += offline_lora_errors(normalized)
        queue = normalized.get("queue")
        if queue is not None and "redis" not in queue and default_redis is None:
            errors.append(
                "spec.queue.redis: required: this operator has no default Redis "
                "(UPSCALER_REDIS_URL or UPSCALER_REDIS_SECRET)"
            )
        errors += env_errors(normalized, default_redis)
    if errors:
        raise InvalidSpec(errors)
    return _typed(normalized, default_redis)


def _redis(raw: Mapping[str, Any]) -> RedisSpec:
    secret = raw.get("secretRef")
    return RedisSpec(
        url=raw.get("url"),
        secret=None if secret is None else SecretKey(name=secret["name"], key=secret["key"]),
        database_index=raw.get("databaseIndex", 0),
        tls=raw.get("tls", False),
    )


def _queue(raw: Mapping[str, Any] | None, default: RedisSpec | None) -> QueueSpec | None:
    if raw is None:
        return None
    redis = _redis(raw["redis"]) if "redis" in raw else default
    assert redis is not None  # parse_spec reported a queue without any Redis
    return QueueSpec(
        redis=redis,
        prefix=raw.get("prefix"),
        max_queued=raw.get("maxQueued"),
        lease_seconds=raw.get("leaseSeconds"),
    )


def _outputs(raw: Mapping[str, Any] | None, queue: QueueSpec | None) -> OutputsSpec:
    if raw is None:  # the operator's default: shared outputs with a shared queue
        return OutputsSpec(store="redis" if queue is not None else "memory")
    s3 = raw.get("s3")
    if s3 is None:
        return OutputsSpec(store=raw["store"])
    credentials = s3.get("credentialsSecret")
    return OutputsSpec(
        store=raw["store"],
        s3=S3Spec(
            bucket=s3["bucket"],
            prefix=s3.get("prefix"),
            endpoint_url=s3.get("endpointUrl"),
            public_url=s3.get("publicUrl"),
            region=s3.get("region"),
            credentials=None
            if credentials is None
            else S3Credentials(
                name=credentials["name"],
                access_key_id_key=credentials["accessKeyIdKey"],
                secret_access_key_key=credentials["secretAccessKeyKey"],
            ),
        ),
    )


def _typed(spec: Mapping[str, Any], default_redis: RedisSpec | None = None) -> DeploymentSpec:
    model, scaling = spec.get("model", {}), spec["scaling"]
    cache = model.get("cache", {})
    pricing, predictor = spec.get("pricing", {}), spec.get("predictor", {})
    defaults, gpu = spec.get("defaults", {}), spec.get("gpu")
    queue = _queue(spec.get("queue"), default_redis)
    return DeploymentSpec(
        engine=spec["engine"],
        model=ModelSpec(
            storage_uri=model.get("storageUri"),
            upscaler_lora=model.get("upscalerLora"),
            distill_lora=model.get("distillLora"),
            dtype=model.get("dtype", "bfloat16"),
            sr_model=model.get("srModel"),
            compile=model.get("compile", True),
            precision=model.get("precision", "bf16"),
            cache=ModelCache(
                enabled=cache.get("enabled", False),
                node_group=cache.get("nodeGroup"),
                model_size=cache.get("modelSize", "80Gi"),
                claim_name=cache.get("claimName"),
            ),
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
            target_queue_length=scaling["targetQueueLength"],
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
        startup_seconds_field=spec.get("startupSeconds"),
        shutdown_grace_seconds=spec.get("shutdownGraceSeconds"),
        queue=queue,
        outputs=_outputs(spec.get("outputs"), queue),
    )
