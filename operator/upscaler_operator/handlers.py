"""kopf glue: which events run the reconcile, and kopf's settings. No logic of its own.

- UpscalerDeployment created, changed, or found at start-up: reconcile it.
- A child changed (an InferenceService's or a ScaledObject's status) or was deleted: reconcile
  its owner. Watching the children (label-selected, server-side) instead of polling with a kopf
  timer keeps the CR free of finalizers, which would block its deletion whenever the operator is
  down.
- An UpscalerDeployment deleted: drop its cost series. Its children go with it through their
  owner references.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from upscaler_operator import GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION
from upscaler_operator.config import OperatorConfig
from upscaler_operator.kube import KubeError
from upscaler_operator.reconcile import ReconcileFailed, Reconciler, owner_of

log = logging.getLogger(__name__)

CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
#: children watched, and the events that call for a reconcile of their owner: a deletion, or an
#: InferenceService whose status moved (the initial listing is covered by the owners' resume)
CHILD_RESOURCES = (
    ("serving.kserve.io", "v1beta1", "inferenceservices", frozenset({"MODIFIED", "DELETED"})),
    ("", "v1", "configmaps", frozenset({"DELETED"})),
    ("monitoring.coreos.com", "v1", "podmonitors", frozenset({"DELETED"})),
    # KEDA's status (Ready, Active) is mirrored into the Autoscaling condition
    ("keda.sh", "v1alpha1", "scaledobjects", frozenset({"MODIFIED", "DELETED"})),
    # spec.model.cache: KServe's node-local copy of the weights
    ("serving.kserve.io", "v1alpha1", "localmodelnamespacecaches", frozenset({"DELETED"})),
)
LoginFn = Callable[..., kopf.ConnectionInfo | None]


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf's state under our own annotation prefix, bounded watches, label-selected children."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # unused: no handler needs one
    settings.watching.server_timeout = config.watch_timeout_s
    settings.watching.client_timeout = config.watch_timeout_s + 15
    settings.watching.connect_timeout = 30
    for group, version, plural, _ in CHILD_RESOURCES:
        key = (group, version, plural) if group else (version, plural)
        settings.watching.label_selectors[key] = CHILD_SELECTOR
    settings.execution.max_workers = config.workers
    settings.posting.level = logging.WARNING  # Events for problems, not for every success


def build_registry(
    reconciler: Reconciler, config: OperatorConfig, login: LoginFn | None = None
) -> kopf.OperatorRegistry:
    """A registry with every handler; ``login`` defaults to kopf's in-cluster/kubeconfig login."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(id="configure", registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, config)
        default_redis = (
            "secret " + config.default_redis_secret
            if config.default_redis_secret
            else config.default_redis_url or "-"
        )
        log.info(
            "operator starting: namespaces=%s predictor_image=%s predictor_cpu_image=%s "
            "default_redis=%s",
            ",".join(config.namespaces) or "*",
            config.predictor_image,
            config.predictor_cpu_image,
            default_redis,
        )

    @kopf.on.login(id="login", registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return (login or kopf.login_via_client)(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    def reconcile_deployment(namespace: str, name: str, **_: Any) -> None:
        try:
            result = reconciler.reconcile(namespace, name)
        except (ReconcileFailed, KubeError) as exc:
            raise kopf.TemporaryError(str(exc), delay=config.retry_delay_s) from exc
        if result is not None and result.retry:  # waiting on the cluster; the status says why
            raise kopf.TemporaryError("waiting on the cluster", delay=config.retry_delay_s)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="deployment-event", registry=registry)
    def deployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(body["metadata"]["namespace"], body["metadata"]["name"])

    for group, version, plural, reacts_to in CHILD_RESOURCES:
        kopf.on.event(
            *((group, version, plural) if group else (version, plural)),
            labels={MANAGED_BY_LABEL: MANAGED_BY},
            id=f"child-{plural}",
            registry=registry,
        )(_child_handler(reconciler, reacts_to))
    return registry


def _child_handler(reconciler: Reconciler, reacts_to: frozenset[str]) -> Callable[..., None]:
    def child_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        owner = owner_of(body) if type in reacts_to else None
        if owner is None:
            return
        try:
            reconciler.reconcile(*owner)
        except (ReconcileFailed, KubeError) as exc:
            log.warning("deployment=%s/%s reconcile after a child change failed: %s", *owner, exc)

    return child_event
