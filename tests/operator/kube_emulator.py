"""kmock's Kubernetes emulator with the realism kopf and the operator rely on.

kmock 0.8 keeps objects and streams watch events, but leaves out what a real API server does on
every write (see ../shared/NOTES-operator-testing.md). This subclass adds, in one place:
- uid, resourceVersion, generation and creationTimestamp, as the API server sets them;
- generation bumped only by spec changes, never by metadata or status;
- the status subresource: writes to the object keep its status, writes to /status keep the rest;
- no event and no new resourceVersion for a write that changes nothing;
- 201 on create, 409 on a duplicate, 404 on a missing object, 422 on a failed JSON-patch ``test``
  or an inapplicable patch;
- ``kind``/``apiVersion`` on list responses.
It does not do garbage collection, label selectors, schema validation or defaulting.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import uuid
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import k8s_dicts, rendering
from kmock._internal.dicts import patch_dict

_RV = itertools.count(1000)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RealisticEmulator(kmock.KubernetesEmulator):
    """A KubernetesEmulator whose writes behave like a real API server's."""

    def _info(self, resource: Any) -> kmock.ResourceInfo | None:
        for known in self.resources:
            if known == resource:
                return self.resources[known]
        return None

    def _has_status_subresource(self, resource: Any) -> bool:
        info = self._info(resource)
        return info is not None and "status" in info.subresources

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        writes = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
        if request.resource is None or request.action not in writes:
            return await super()._handle(request)
        try:
            async with self._lock:
                payload = await self._write(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        status = 201 if request.action == kmock.action.CREATE else 200
        return aiohttp.web.json_response(payload, status=status)

    async def _write(self, request: rendering.Request) -> dict[str, Any]:
        if request.action == kmock.action.CREATE:
            return await self._create(request)
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesError(404, "NotFound", f"{request.name} not found")
        if request.action == kmock.action.DELETE:
            return await self._delete(request, key)
        return await self._update(request, key)

    async def _emit(self, resource: Any, kind: str, raw: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": copy.deepcopy(raw)})

    async def _create(self, request: rendering.Request) -> dict[str, Any]:
        body = copy.deepcopy(request.data or {})
        meta = body.setdefault("metadata", {})
        if request.namespace is not None:
            meta["namespace"] = request.namespace
        key = (request.resource, meta.get("namespace"), meta.get("name"))
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(409, "AlreadyExists", f"{meta.get('name')} already exists")
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(_RV)),
            generation=1,
            creationTimestamp=_now(),
        )
        if self._has_status_subresource(request.resource):
            body.pop("status", None)
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        await self._emit(request.resource, "ADDED", body)
        return body

    async def _update(self, request: rendering.Request, key: tuple[Any, ...]) -> dict[str, Any]:
        obj = self._objects[key]
        old = copy.deepcopy(obj.raw)
        try:
            new = dict(patch_dict(copy.deepcopy(old), request.data or {}))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError) as exc:
            raise kmock.KubernetesError(422, "Invalid", str(exc)) from exc
        if request.subresource == "status":
            new = {**old, "status": new.get("status")} if "status" in new else dict(old)
            if new.get("status") is None:
                new.pop("status", None)
        elif self._has_status_subresource(request.resource):
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        meta, old_meta = new.setdefault("metadata", {}), old.get("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if new == old:
            return old  # a no-op write: no new version, no event
        body_keys = (set(new) | set(old)) - {"metadata", "status", "apiVersion", "kind"}
        if any(new.get(k) != old.get(k) for k in body_keys):
            meta["generation"] = old_meta.get("generation", 1) + 1
        meta["resourceVersion"] = str(next(_RV))
        obj.history.append(k8s_dicts.ObjectVersion(new))
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            obj.delete()
            await self._emit(request.resource, "DELETED", new)
        else:
            await self._emit(request.resource, "MODIFIED", new)
        return new

    async def _delete(self, request: rendering.Request, key: tuple[Any, ...]) -> dict[str, Any]:
        obj = self._objects[key]
        current = copy.deepcopy(obj.raw)
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return current
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = _now()
            meta["resourceVersion"] = str(next(_RV))
            obj.history.append(k8s_dicts.ObjectVersion(current))
            await self._emit(request.resource, "MODIFIED", current)
            return current
        obj.delete()
        await self._emit(request.resource, "DELETED", current)
        return current

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_list(request)
        info = self._info(request.resource)
        kind = info.kind if info is not None and info.kind else "Object"
        group_version = (
            request.resource.version
            if not request.resource.group
            else f"{request.resource.group}/{request.resource.version}"
        )
        return {
            "apiVersion": group_version,
            "kind": f"{kind}List",
            **payload,
            "metadata": {"resourceVersion": str(next(_RV))},
        }
