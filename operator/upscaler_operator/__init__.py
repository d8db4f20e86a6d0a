"""Kubernetes operator: reconciles UpscalerDeployment objects into KServe InferenceServices.

Rooms: ``crd.yaml`` (the CRD, the one source of its schema) and ``crd.py`` (reading it),
``openapi.py`` (the schema's checks and defaults in Python), ``spec.py`` (a CR's spec into a typed
model or a list of errors), ``uris.py`` (storage and LoRA URI rules), ``builders.py`` (spec into
child manifests), ``status.py`` (InferenceService into the CR's status), ``kube.py`` (a small
Kubernetes REST client), ``reconcile.py`` (the one idempotent reconcile), ``handlers.py`` (kopf
glue), ``metrics.py`` and ``__main__.py`` (the command line).
"""

GROUP = "serving.chrono-upscaler.dev"
VERSION = "v1alpha1"
PLURAL = "upscalerdeployments"
KIND = "UpscalerDeployment"
API_VERSION = f"{GROUP}/{VERSION}"

#: label on every child, and the label selector of the operator's watches on children
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "upscaler-operator"
#: label naming the owning UpscalerDeployment on every child
DEPLOYMENT_LABEL = f"{GROUP}/deployment"
