"""A small Kubernetes REST client: get, create, JSON-patch, merge-patch, delete and discovery.

The official client does the hard parts (in-cluster and kubeconfig credentials, token refresh,
TLS); its typed API classes are skipped because the operator handles every kind as plain JSON
and must choose the patch Content-Type itself (the typed client turns a list-shaped patch into a
merge patch unless told otherwise).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import kubernetes.config

log = logging.getLogger(__name__)

JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A failed API call, with the API server's status code and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Ref:
    """Where an object (or, without a name, a collection) lives in the API."""

    api_version: str
    plural: str
    namespace: str | None
    name: str | None = None

    @property
    def collection_path(self) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespace is not None:
            base += f"/namespaces/{self.namespace}"
        return f"{base}/{self.plural}"

    @property
    def path(self) -> str:
        if self.name is None:
            raise ValueError(f"{self} names no object")
        return f"{self.collection_path}/{self.name}"

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.plural}.{self.api_version} {where}{self.name or '*'}"


class Kube:
    """Synchronous JSON calls; kopf runs the handlers that use it in worker threads."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else $KUBECONFIG or ~/.kube/config."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            log.info("kubernetes credentials: in-cluster service account")
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
            log.info("kubernetes credentials: kubeconfig, server %s", configuration.host)
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def for_server(cls, url: str, token: str | None = None) -> Kube:
        """A client for a plain URL (tests, local API servers)."""
        configuration = kubernetes.client.Configuration(host=url)
        if token is not None:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(kubernetes.client.ApiClient(configuration))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        """One call; the decoded JSON answer, or KubeError for any non-2xx status."""
        headers = {"Accept": JSON, "Content-Type": content_type}
        serialized = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*serialized, _request_timeout=self.timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise _error(response.status, data)
        return json.loads(data) if data else None

    def get(self, ref: Ref) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", ref.path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list_items(self, ref: Ref) -> list[dict[str, Any]]:
        """The items of a collection (``ref`` without a name); empty when it is not served."""
        try:
            listing = self.request("GET", ref.collection_path)
        except KubeError as exc:
            if exc.status == 404:
                return []
            raise
        return list((listing or {}).get("items") or [])

    def create(self, ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", ref.collection_path, body)

    def json_patch(self, ref: Ref, operations: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("PATCH", ref.path, operations, JSON_PATCH)

    def delete(self, ref: Ref) -> None:
        """Delete the object (its dependents in the background); gone already is fine."""
        try:
            self.request("DELETE", ref.path)
        except KubeError as exc:
            if exc.status != 404:
                raise

    def merge_patch_status(self, ref: Ref, status_patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", f"{ref.path}/status", {"status": status_patch}, MERGE_PATCH)

    def resources(self, api_version: str) -> set[str] | None:
        """Resource names served under an API group version; None when it is not served."""
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            listing = self.request("GET", path)
        except KubeError as exc:
            if exc.status in (404, 503):  # absent, or an aggregated API that is down
                return None
            raise
        return {item.get("name", "") for item in (listing or {}).get("resources", [])}


def _error(status: int, data: bytes) -> KubeError:
    try:
        payload = json.loads(data)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    reason = str(payload.get("reason") or "Error")
    message = str(payload.get("message") or data[:200].decode("utf-8", "replace"))
    return KubeError(status, reason, message)
