"""``upscaler-operator`` / ``python -m upscaler_operator``: run the operator with kopf.

Credentials come from the pod's service account in a cluster, else from $KUBECONFIG or
~/.kube/config. Every flag defaults from an environment variable, so the Deployment manifest
configures it through ``env``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from upscaler_operator.builders import DEFAULT_PREDICTOR_CPU_IMAGE, DEFAULT_PREDICTOR_IMAGE
from upscaler_operator.config import OperatorConfig
from upscaler_operator.spec import default_redis

log = logging.getLogger("upscaler_operator")


def _namespaces(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    defaults = OperatorConfig()
    parser = argparse.ArgumentParser(
        prog="upscaler-operator",
        description="Reconcile UpscalerDeployments into KServe InferenceServices.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="namespace to serve, repeatable (env WATCH_NAMESPACE, comma-separated); "
        "none: the whole cluster",
    )
    parser.add_argument(
        "--predictor-image",
        default=environ.get("PREDICTOR_IMAGE", DEFAULT_PREDICTOR_IMAGE),
        help="predictor image (the CUDA variant) for deployments with GPUs that name none "
        "(env PREDICTOR_IMAGE)",
    )
    parser.add_argument(
        "--predictor-cpu-image",
        default=environ.get("PREDICTOR_CPU_IMAGE", DEFAULT_PREDICTOR_CPU_IMAGE),
        help="predictor image (the CPU-only variant) for deployments without GPUs (sr) that "
        "name none (env PREDICTOR_CPU_IMAGE)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(environ.get("METRICS_PORT", defaults.metrics_port)),
        help="Prometheus /metrics port, 0 for none (env METRICS_PORT)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=int(environ.get("LIVENESS_PORT", defaults.liveness_port)),
        help="kopf liveness endpoint port serving /healthz, 0 for none (env LIVENESS_PORT)",
    )
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=float(environ.get("WATCH_TIMEOUT_SECONDS", defaults.watch_timeout_s)),
        help="seconds before a watch is renewed (env WATCH_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=float(environ.get("RETRY_DELAY_SECONDS", defaults.retry_delay_s)),
        help="seconds before a reconcile that hit an API error runs again "
        "(env RETRY_DELAY_SECONDS)",
    )
    parser.add_argument(
        "--default-redis-url",
        default=environ.get("UPSCALER_REDIS_URL") or None,
        help="Redis for deployments whose spec.queue names none: redis[s]://host[:port][/db], "
        "without credentials (env UPSCALER_REDIS_URL)",
    )
    parser.add_argument(
        "--default-redis-secret",
        default=environ.get("UPSCALER_REDIS_SECRET") or None,
        help="or a Secret, in each deployment's namespace, whose key 'url' holds it (with "
        "'address' = host:port and optional 'username', 'password' for KEDA) "
        "(env UPSCALER_REDIS_SECRET)",
    )
    parser.add_argument(
        "--log-level",
        default=environ.get("LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (env LOG_LEVEL)",
    )
    parser.add_argument(
        "--print-crd",
        action="store_true",
        help="print the UpscalerDeployment CRD (what manifests/crd.yaml holds) and exit",
    )
    parser.set_defaults(environ_namespaces=_namespaces(environ.get("WATCH_NAMESPACE", "")))
    return parser


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    namespaces = args.namespaces if args.namespaces is not None else args.environ_namespaces
    return OperatorConfig(
        predictor_image=args.predictor_image,
        predictor_cpu_image=args.predictor_cpu_image,
        namespaces=tuple(namespaces),
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        watch_timeout_s=args.watch_timeout,
        retry_delay_s=args.retry_delay,
        default_redis_url=args.default_redis_url,
        default_redis_secret=args.default_redis_secret,
    )


def run(config: OperatorConfig) -> None:
    """Start metrics, then kopf; returns when kopf stops (SIGTERM/SIGINT)."""
    import kopf

    from upscaler_operator.handlers import build_registry
    from upscaler_operator.kube import Kube
    from upscaler_operator.metrics import Metrics
    from upscaler_operator.reconcile import Reconciler

    metrics = Metrics()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
        log.info("metrics on :%d/metrics", config.metrics_port)
    reconciler = Reconciler(Kube.from_environment(), metrics, config)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        registry=build_registry(reconciler, config),
        standalone=True,  # one replica; no kopf peering objects needed
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=liveness,
    )


class _QuietRoutineLogs(logging.Filter):
    """Drop kopf's per-event "succeeded" lines for the watch handlers, and access logs of probes.

    Every InferenceService status change would otherwise log a line that says nothing; the
    reconcile logs what it did, and failures still come through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if record.name == "kopf.objects" and message.endswith("' succeeded."):
            return not message.startswith(("Handler 'child-", "Handler 'deployment-event'"))
        return record.name != "aiohttp.access"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_crd:
        from upscaler_operator.crd import crd_text

        sys.stdout.write(crd_text())
        return 0
    try:
        default_redis(args.default_redis_url, args.default_redis_secret)
    except ValueError as exc:
        parser.error(f"default Redis: {exc}")  # exits 2
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietRoutineLogs())
    import kubernetes.config

    try:
        run(config_from_args(args))
    except kubernetes.config.ConfigException as exc:
        log.error("no Kubernetes credentials (in-cluster or kubeconfig): %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
