"""The one idempotent reconcile, for create, update, resume and every change to a child.

Read the spec (invalid: say so in the status and stop, without touching the children), build
the children, delete a ScaledObject the spec no longer asks for, create the missing children and
patch the ones whose content hash differs from the hash of what the operator last applied, then
mirror the InferenceService (and KEDA's ScaledObject) into the status. Drift is judged by that
hash alone, not by comparing content: KServe's webhook rewrites what it stores (quantities, empty
fields, defaults), and a content comparison would fight it forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from upscaler_operator import API_VERSION, KIND, MANAGED_BY, MANAGED_BY_LABEL, PLURAL
from upscaler_operator.builders import (
    DEPLOYMENT_MODES,
    ISVC_API_VERSION,
    KEDA,
    KEDA_API_VERSION,
    KSERVE_LOCAL_MODEL_ANNOTATIONS,
    KSERVE_LOCAL_MODEL_LABELS,
    LOCAL_MODEL_API_VERSION,
    LOCAL_MODEL_LABEL,
    MANAGED_ANNOTATIONS,
    PODMONITOR_API_VERSION,
    SPEC_HASH_ANNOTATION,
    BuildOptions,
    Child,
    Owner,
    autoscaler,
    build_children,
    image_errors,
    isvc_name,
    model_cache_name,
    model_caches_ref,
    node_cached,
    predictor_deployment_name,
    queue_prefix,
    scaled_object_name,
    scaled_object_ref,
    storage_uris,
)
from upscaler_operator.config import OperatorConfig
from upscaler_operator.kube import Kube, KubeError, Ref
from upscaler_operator.metrics import Metrics
from upscaler_operator.spec import DeploymentSpec, InvalidSpec, default_redis, parse_spec
from upscaler_operator.status import (
    FALSE,
    UNKNOWN,
    ConditionState,
    Outcome,
    autoscaling_state,
    build_status,
    now_rfc3339,
    status_patch,
)

log = logging.getLogger(__name__)


class ReconcileFailed(Exception):
    """An API call failed; the status says so and the caller should retry later."""


@dataclass(frozen=True)
class Result:
    outcome: str  # ok | invalid
    status: dict[str, Any]
    retry: bool = False  # waiting on the cluster (a deletion, KServe's HPA): run again later


#: KServe's own names of the deployment modes, old and new, as its status may record them
_KSERVE_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
#: a resource KServe serves from 0.18 on, the release whose storage initializer downloads
#: several storageUris (its ClusterStorageContainer supportsMultiModelDownload)
KSERVE_018_MARKER = ("serving.kserve.io/v1alpha1", "localmodelnamespacecaches")
HPA_API_VERSION = "autoscaling/v2"
#: KEDA's webhook skips an HPA carrying this annotation with "false"
KEDA_HPA_OWNERSHIP_ANNOTATION = "validations.keda.sh/hpa-ownership"


def recorded_mode(isvc: Mapping[str, Any] | None) -> str | None:
    """The deployment mode KServe recorded in the InferenceService's status (its current name).

    KServe's webhook refuses any change of the mode annotation once the status records one.
    """
    mode = ((isvc or {}).get("status") or {}).get("deploymentMode")
    return _KSERVE_MODES.get(mode, mode) if mode else None


def blocking_hpas(hpas: list[dict[str, Any]], owner: Owner) -> list[str]:
    """HPAs that make KEDA's webhook refuse our ScaledObject: they target the predictor's
    Deployment, are not owned by that ScaledObject and do not opt out of KEDA's check."""
    deployment = predictor_deployment_name(owner.name)
    scaled_object = scaled_object_name(owner.name)
    found = []
    for hpa in hpas:
        meta = hpa.get("metadata") or {}
        if (meta.get("annotations") or {}).get(KEDA_HPA_OWNERSHIP_ANNOTATION) == "false":
            continue
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if target.get("kind") != "Deployment" or target.get("name") != deployment:
            continue
        owners = meta.get("ownerReferences") or []
        if any(o.get("kind") == "ScaledObject" and o.get("name") == scaled_object for o in owners):
            continue
        found.append(meta.get("name", "?"))
    return found


def cluster_notes(spec: DeploymentSpec, cached: bool = False) -> tuple[str, ...]:
    """What the cluster must allow that the operator cannot see: Knative's PVC features."""
    pvc = any(entry["uri"].startswith("pvc://") for entry in storage_uris(spec, cached))
    pvc = pvc or cached or spec.model.cache.claim_name is not None
    if pvc and spec.scaling.mode == "Serverless":
        return (
            "pvc:// storage, the node cache and spec.model.cache.claimName in Serverless mode "
            "need Knative's kubernetes.podspec-persistent-volume-claim and "
            "kubernetes.podspec-persistent-volume-write features enabled (KServe mounts the "
            "claim read-write)",
        )
    return ()


def model_cache_note(
    spec: DeploymentSpec,
    served: bool,
    node_group_found: bool | None,
    isvc: Mapping[str, Any] | None,
) -> str | None:
    """What became of spec.model.cache.enabled, for the Ready condition's message."""
    cache = spec.model.cache
    if spec.engine != "chronoedit" or not cache.enabled:
        return None
    fallback = "; the storage initializer downloads the weights at every start instead"
    if not served:
        return (
            "spec.model.cache: this cluster serves no serving.kserve.io/v1alpha1 "
            f"LocalModelNamespaceCache (KServe's node-local model cache){fallback}"
        )
    if node_group_found is False:
        group = cache.node_group
        return f"spec.model.cache.nodeGroup: LocalModelNodeGroup {group} not found{fallback}"
    labels = ((isvc or {}).get("metadata") or {}).get("labels") or {}
    if isvc is not None and labels.get(LOCAL_MODEL_LABEL) is None:
        return (
            f"spec.model.cache: KServe has not attached the node cache to the InferenceService "
            f"(is localModel.enabled in its inferenceservice-config?){fallback}"
        )
    return f"weights from KServe's node cache on node group {cache.node_group}"


def _key(owner: Owner) -> tuple[str, str]:
    return owner.namespace, owner.name


def deployment_ref(namespace: str, name: str) -> Ref:
    return Ref(API_VERSION, PLURAL, namespace, name)


def is_up_to_date(current: Mapping[str, Any], child: Child) -> bool:
    """The child carries the hash of the wanted content and its owner reference."""
    meta = current.get("metadata") or {}
    applied = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    wanted_uids = {ref["uid"] for ref in child.manifest["metadata"]["ownerReferences"]}
    present_uids = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
    return applied == child.spec_hash and wanted_uids <= present_uids


def patch_operations(
    current: Mapping[str, Any], desired: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A JSON patch that makes ``current`` carry ``desired``'s content, in place.

    Labels and annotations set by others stay, but for KServe's node-cache bookkeeping, which
    its webhook recomputes on the way in; the operator's own annotations are rewritten (so one
    it no longer wants goes away). The spec (or a ConfigMap's data) is replaced whole:
    the operator owns it, and KServe's webhook re-applies its defaults on the way in.
    """
    meta, wanted = current.get("metadata") or {}, desired["metadata"]
    kept = {
        key: value
        for key, value in (meta.get("labels") or {}).items()
        if key not in KSERVE_LOCAL_MODEL_LABELS
    }
    labels = {**kept, **wanted["labels"]}
    dropped = MANAGED_ANNOTATIONS | KSERVE_LOCAL_MODEL_ANNOTATIONS
    annotations = {
        key: value for key, value in (meta.get("annotations") or {}).items() if key not in dropped
    }
    annotations.update(wanted["annotations"])
    wanted_uids = {ref["uid"] for ref in wanted["ownerReferences"]}
    owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("uid") not in wanted_uids]
    owners += wanted["ownerReferences"]
    operations = [
        {"op": "add", "path": "/metadata/labels", "value": labels},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
        {"op": "add", "path": "/metadata/ownerReferences", "value": owners},
    ]
    for key in ("spec", "data"):
        if key in desired:
            operations.append({"op": "add", "path": f"/{key}", "value": desired[key]})
    return operations


def owned_by(current: Mapping[str, Any], owner: Owner) -> bool:
    """The operator made this object for this deployment: its label and owner reference."""
    meta = current.get("metadata") or {}
    managed = (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
    return managed and owner.uid in {ref.get("uid") for ref in meta.get("ownerReferences") or []}


def owner_of(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the UpscalerDeployment a child belongs to, from its owner reference."""
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("controller"):
            return meta.get("namespace", ""), ref.get("name", "")
    return None


class Reconciler:
    """Holds what reconciles share: the API client, metrics, and one lock per deployment."""

    def __init__(self, kube: Kube, metrics: Metrics, config: OperatorConfig) -> None:
        self.kube = kube
        self.metrics = metrics
        self.config = config
        self.default_redis = default_redis(config.default_redis_url, config.default_redis_secret)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._discovered: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._discovery_guard = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """A deployment was deleted: drop its cost series and its lock."""
        self.metrics.forget(namespace, name)
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        log.info("deployment=%s/%s deleted; cost series removed", namespace, name)

    def reconcile(self, namespace: str, name: str) -> Result | None:
        """Bring the children and the status in line with the spec; idempotent.

        Reads the deployment afresh under its lock: another reconcile (a child's event) may have
        written the status since the caller's copy was taken. None if it is gone or going.
        """
        with self._lock(namespace, name):
            body = self.kube.get(deployment_ref(namespace, name))
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return None
            started, outcome = time.monotonic(), "error"
            try:
                result = self._reconcile(body)
                outcome = result.outcome
                return result
            finally:
                self.metrics.observe(outcome, time.monotonic() - started)

    def _reconcile(self, body: Mapping[str, Any]) -> Result:
        owner = Owner.from_body(body)
        key = f"{owner.namespace}/{owner.name}"
        isvc_ref = Ref(
            ISVC_API_VERSION, "inferenceservices", owner.namespace, isvc_name(owner.name)
        )
        spec: DeploymentSpec | None = None
        try:
            spec = parse_spec(body.get("spec"), name=owner.name, default_redis=self.default_redis)
        except InvalidSpec as exc:
            log.warning("deployment=%s invalid spec, children left as they are: %s", key, exc)
            result = Outcome(invalid=exc.errors)
            isvc = self.kube.get(isvc_ref)  # a running service keeps being reported
        else:
            result, isvc = self._apply_all(owner, spec)
        status = build_status(
            generation=(body["metadata"]).get("generation"),
            previous=body.get("status"),
            spec=spec,
            outcome=result,
            isvc=isvc,
            isvc_name=isvc_ref.name or "",
        )
        # the gauge first: whoever sees the new status then finds the cost series agreeing
        self.metrics.set_cost(owner.namespace, owner.name, status["estimatedHourlyCostUsd"])
        self._write_status(owner, body.get("status"), status)
        if result.failure is not None:
            raise ReconcileFailed(result.failure)
        waiting = result.blocked is not None or (
            result.autoscaling is not None and result.autoscaling.reason == "WaitingForHPARemoval"
        )
        return Result("invalid" if result.invalid is not None else "ok", status, retry=waiting)

    def _apply_all(
        self, owner: Owner, spec: DeploymentSpec
    ) -> tuple[Outcome, Mapping[str, Any] | None]:
        caches_served = self.served(LOCAL_MODEL_API_VERSION, "localmodelnamespacecaches")
        node_group_found = self.node_group_found(spec) if caches_served else None
        options = BuildOptions(
            predictor_image=self.config.predictor_image,
            predictor_cpu_image=self.config.predictor_cpu_image,
            pod_monitor=self.pod_monitors_served(),
            keda=self.scaled_objects_served(),
            local_model_cache=caches_served and node_group_found is not False,
        )
        cached = node_cached(spec, options)
        scaler = autoscaler(spec, options)
        isvc: Mapping[str, Any] | None = None
        scaled_object: Mapping[str, Any] | None = None
        wrong_image = image_errors(spec, options)
        if wrong_image:  # refused like an invalid spec: the children stay as they are
            log.warning("deployment=%s/%s %s", *_key(owner), "; ".join(wrong_image))
            ref = Ref(ISVC_API_VERSION, "inferenceservices", owner.namespace, isvc_name(owner.name))
            return Outcome(invalid=wrong_image), self.kube.get(ref)
        if storage_uris(spec, cached) and self.kserve_too_old():
            message = (
                "spec.model: the InferenceService needs KServe >= 0.18 (storageUris, downloaded "
                f"by a storage initializer that supports several); this cluster serves no "
                f"{KSERVE_018_MARKER[1]}.{KSERVE_018_MARKER[0]}, so its KServe is older: upgrade "
                "KServe"
            )
            return Outcome(blocked=ConditionState(FALSE, "KServeTooOld", message)), None
        try:
            recreating = self._recreate_on_mode_change(owner, spec)
        except KubeError as exc:
            log.error("deployment=%s/%s mode change failed: %s", *_key(owner), exc)
            return Outcome(failure=f"InferenceService {isvc_name(owner.name)}: {exc}"), isvc
        if recreating is not None:
            return Outcome(blocked=recreating), None
        if options.keda and scaler != KEDA:
            # first, so KEDA hands the Deployment back before KServe's own HPA takes it
            ref = scaled_object_ref(owner)
            try:
                self.remove(ref, owner)
            except KubeError as exc:
                log.error("deployment=%s/%s delete %s failed: %s", *_key(owner), ref, exc)
                return Outcome(failure=f"ScaledObject {ref.name}: {exc}"), isvc
        applied: list[str] = []
        waiting: ConditionState | None = None
        for child in build_children(owner, spec, options):
            if child.kind == "ScaledObject":
                try:
                    waiting = self._hpa_in_the_way(owner)
                except KubeError as exc:
                    return Outcome(failure=f"HorizontalPodAutoscalers: {exc}"), isvc
                if waiting is not None:
                    continue
            try:
                current = self.apply(child)
            except KubeError as exc:
                log.error("deployment=%s/%s apply %s failed: %s", *_key(owner), child.ref, exc)
                return Outcome(failure=f"{child.kind} {child.ref.name}: {exc}"), isvc
            applied.append(child.kind)
            if child.kind == "InferenceService":
                isvc = current
            elif child.kind == "ScaledObject":
                scaled_object = current
        scaling = waiting or autoscaling_state(
            spec,
            scaler,
            prefix=queue_prefix(owner.namespace, owner.name, spec),
            scaled_object=scaled_object,
        )
        if caches_served:
            wanted = model_cache_name(owner.name, spec.model.storage_uri or "") if cached else None
            self._remove_stale_caches(owner, wanted)
        notes = cluster_notes(spec, cached)
        cache_note = model_cache_note(spec, caches_served, node_group_found, isvc)
        if cache_note is not None:
            notes += (cache_note,)
        return Outcome(applied=tuple(applied), autoscaling=scaling, notes=notes), isvc

    def _remove_stale_caches(self, owner: Owner, wanted: str | None) -> None:
        """Delete this deployment's node caches other than ``wanted``. KServe refuses while
        an InferenceService still uses one (it moves it at the next admission): that one goes
        on a later reconcile."""
        try:
            caches = self.kube.list_items(model_caches_ref(owner.namespace))
        except KubeError as exc:
            log.warning("deployment=%s/%s cannot list node caches: %s", *_key(owner), exc)
            return
        for cache in caches:
            name = cache["metadata"]["name"]
            if name == wanted or not owned_by(cache, owner):
                continue
            ref = Ref(LOCAL_MODEL_API_VERSION, "localmodelnamespacecaches", owner.namespace, name)
            try:
                self.remove(ref, owner)
            except KubeError as exc:
                log.info("deployment=%s/%s %s kept for now: %s", *_key(owner), name, exc)

    def node_group_found(self, spec: DeploymentSpec) -> bool | None:
        """Whether spec.model.cache.nodeGroup exists; None when it cannot be read (RBAC)."""
        cache = spec.model.cache
        if not cache.enabled or cache.node_group is None:
            return None
        ref = Ref(LOCAL_MODEL_API_VERSION, "localmodelnodegroups", None, cache.node_group)
        try:
            return self.kube.get(ref) is not None
        except KubeError as exc:
            log.warning("cannot read LocalModelNodeGroup %s: %s", cache.node_group, exc)
            return None

    def kserve_too_old(self) -> bool:
        """KServe serves its v1alpha1 API without the 0.18 marker (unknown counts as new)."""
        api_version, plural = KSERVE_018_MARKER
        resources = self._resources_cached(api_version)
        return resources is not None and plural not in resources

    def _recreate_on_mode_change(self, owner: Owner, spec: DeploymentSpec) -> ConditionState | None:
        """Delete an InferenceService whose recorded deployment mode is not the wanted one.

        KServe's webhook refuses to change the mode in place, so a patch would fail forever. The
        deletion is announced by an Event; the deployment is recreated once the old one is gone
        (its DELETED event, or the retry). While it goes, the condition says so.
        """
        ref = Ref(ISVC_API_VERSION, "inferenceservices", owner.namespace, isvc_name(owner.name))
        current = self.kube.get(ref)
        if current is None or not owned_by(current, owner):
            return None
        wanted = DEPLOYMENT_MODES[spec.scaling.mode]
        recorded = recorded_mode(current)
        going = bool((current.get("metadata") or {}).get("deletionTimestamp"))
        if not going and (recorded is None or recorded == wanted):
            return None
        message = (
            f"spec.scaling.mode changed: KServe cannot turn an InferenceService from {recorded} "
            f"into {wanted} in place, so {ref.name} is deleted and created again in {wanted} "
            "mode once it is gone (the service is down meanwhile)"
        )
        if not going:
            self.kube.delete(ref)
            log.warning("deployment=%s/%s %s", *_key(owner), message)
            self.post_event(owner, "RecreatingInferenceService", message, warning=True)
        return ConditionState(FALSE, "RecreatingInferenceService", message)

    def _hpa_in_the_way(self, owner: Owner) -> ConditionState | None:
        """Another HPA still targets the predictor's Deployment (KServe's, until it notices the
        class became external): KEDA's webhook would refuse the ScaledObject, so wait for it."""
        ref = Ref(HPA_API_VERSION, "horizontalpodautoscalers", owner.namespace)
        hpas = self.kube.list_items(ref)
        blocking = blocking_hpas(hpas, owner)
        if not blocking:
            return None
        message = (
            f"waiting for HorizontalPodAutoscaler {', '.join(blocking)} to go: it still scales "
            f"Deployment {predictor_deployment_name(owner.name)} and KEDA refuses a second "
            "autoscaler; KServe removes its own HPA after autoscalerClass became external, then "
            "the ScaledObject is created"
        )
        return ConditionState(UNKNOWN, "WaitingForHPARemoval", message)

    def post_event(self, owner: Owner, reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the UpscalerDeployment; a failure to post is only logged."""
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{owner.name}.{time.time_ns():x}",
                "namespace": owner.namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": MANAGED_BY},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.kube.create(Ref("v1", "events", owner.namespace), body)
        except KubeError as exc:
            log.warning("deployment=%s/%s event %s not posted: %s", *_key(owner), reason, exc)

    def remove(self, ref: Ref, owner: Owner) -> bool:
        """Delete a child the spec no longer asks for, if it is there and the operator made it."""
        current = self.kube.get(ref)
        if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
            return False
        if not owned_by(current, owner):
            log.warning("%s is not the operator's: left alone", ref)
            return False
        self.kube.delete(ref)
        log.info("deleted %s: the spec no longer asks for it", ref)
        return True

    def apply(self, child: Child) -> dict[str, Any]:
        """Create the child, or patch it in place when its hash differs; the stored object."""
        current = self.kube.get(child.ref)
        if current is None:
            try:
                created = self.kube.create(child.ref, child.manifest)
                log.info("created %s hash=%s", child.ref, child.spec_hash)
                return created
            except KubeError as exc:
                if exc.status != 409:
                    raise
                current = self.kube.get(child.ref)  # a concurrent create won: patch that one
                if current is None:
                    raise
        labels = (current.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            message = f"{child.ref} exists and is not managed by {MANAGED_BY}"
            raise KubeError(409, "Conflict", message)
        if is_up_to_date(current, child):
            return current
        patched = self.kube.json_patch(child.ref, patch_operations(current, child.manifest))
        log.info("patched %s hash=%s", child.ref, child.spec_hash)
        return patched

    def pod_monitors_served(self) -> bool:
        """Whether the cluster serves PodMonitors (the Prometheus operator), cached for a while."""
        return self.served(PODMONITOR_API_VERSION, "podmonitors")

    def scaled_objects_served(self) -> bool:
        """Whether the cluster serves KEDA's ScaledObjects, cached for a while."""
        return self.served(KEDA_API_VERSION, "scaledobjects")

    def served(self, api_version: str, plural: str) -> bool:
        """Whether API discovery lists the resource, remembered for ``discovery_ttl_s``."""
        resources = self._resources_cached(api_version)
        return resources is not None and plural in resources

    def _resources_cached(self, api_version: str) -> frozenset[str] | None:
        """What discovery lists under an API group version (None: not served), cached."""
        now = time.monotonic()
        with self._discovery_guard:
            cached = self._discovered.get(api_version)
        if cached is not None and now - cached[0] < self.config.discovery_ttl_s:
            return cached[1]
        try:
            found = self.kube.resources(api_version)
        except KubeError as exc:
            log.warning("cannot discover %s, taken as not served: %s", api_version, exc)
            found = None
        resources = None if found is None else frozenset(found)
        with self._discovery_guard:
            if cached is None or cached[1] != resources:
                listed = ", ".join(sorted(resources)) if resources is not None else "not served"
                log.info("%s: %s", api_version, listed)
            self._discovered[api_version] = (now, resources)
        return resources

    def _write_status(
        self, owner: Owner, previous: Mapping[str, Any] | None, status: dict[str, Any]
    ) -> None:
        if previous == status:
            return
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        try:
            self.kube.merge_patch_status(
                deployment_ref(owner.namespace, owner.name), status_patch(previous, status)
            )
        except KubeError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        log.info(
            "deployment=%s/%s ready=%s reason=%s replicas=%s url=%s cost_usd_per_hour=%s",
            owner.namespace,
            owner.name,
            ready["status"],
            ready["reason"],
            status["replicas"],
            status.get("url", "-"),
            status["estimatedHourlyCostUsd"],
        )
