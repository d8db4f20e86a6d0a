"""Every route on the port, decided: who may call it, and what the OpenAPI document says of it.

KServe would register all of its routes on the shared app when the server starts;
:func:`register_kserve_routes` registers instead the ones listed in :data:`ROUTES`, with KServe's
own handlers, so a route nobody decided about is never served (and a test walking the route
table fails on one). Model load/unload and explain change or bypass the model, so they exist only
with ``--enable-model-control``, and then behind the key. KServe's v2 inference and model
metadata are not served: this model speaks fal's JSON (the fal route, the queue, v1 ``:predict``),
not tensors, so v2 infer could only ever fail.

KServe's v1 ``:predict`` is replaced by :func:`mount_v1_predict`: KServe's parser refuses NaN
and Infinity as an unreadable body, where ours names the field (422), as every route does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from kserve.protocol.rest.v2_datamodels import (
    ModelReadyResponse,
    ServerLiveResponse,
    ServerReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from starlette.routing import BaseRoute

from predictor.api.access import V1, V2
from predictor.api.errors import (
    INPUT_ERRORS,
    REQUEST_ERRORS,
    KServeErrorBody,
    body_not_json,
    openapi_responses,
)
from predictor.api.kserve_model import UpscalerModel
from predictor.errors import not_ready


def route_key(route: BaseRoute) -> list[tuple[str, str]]:
    """(method, path) pairs a route answers (HEAD, which Starlette adds to GET, left out)."""
    methods = getattr(route, "methods", None) or {"GET"}
    path = getattr(route, "path", "")
    return [(method, path) for method in sorted(methods) if method != "HEAD"]


def register_kserve_routes(
    app: FastAPI,
    dataplane: DataPlane,
    repository: ModelRepositoryExtension | None,
    enable_model_control: bool,
) -> None:
    """KServe's routes that :data:`ROUTES` exposes, bound to KServe's own handlers, with the
    responses each can answer (KServe declares only 200 and 422)."""
    v1 = V1Endpoints(dataplane, repository)
    v2 = V2Endpoints(dataplane, repository)
    ready_errors = {404: KServeErrorBody, 503: KServeErrorBody}

    def add(path: str, endpoint, spec: dict, method: str = "GET", **kwargs: Any) -> None:
        tags = ["KServe v2" if path.startswith("/v2") else "KServe"]
        responses = openapi_responses(spec)
        app.add_api_route(
            path, endpoint, methods=[method], tags=tags, responses=responses, **kwargs
        )

    add("/", dataplane.live, {200: 'alive: {"status": "alive"}'})
    app.add_api_route(
        "/metrics",
        metrics_handler,
        methods=["GET"],
        tags=["KServe"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus metrics", "content": {"text/plain": {}}}},
    )
    add("/v1/models", v1.models, {200: "the model names"})
    add(V1, v1.model_ready, {200: "ready", **ready_errors})
    add("/v2/health/live", v2.live, {}, response_model=ServerLiveResponse)
    add("/v2/health/ready", v2.ready, {503: KServeErrorBody}, response_model=ServerReadyResponse)

    async def model_ready(model_name: str) -> ModelReadyResponse:
        """v2 model readiness, without KServe's ``model_version`` (a 501 for any value)."""
        return await v2.model_ready(model_name)

    add(V2 + "/ready", model_ready, ready_errors, response_model=ModelReadyResponse)
    if enable_model_control:
        control_errors = {
            400: KServeErrorBody,
            500: KServeErrorBody,
            501: KServeErrorBody,
            **ready_errors,
        }
        add(V1 + ":explain", v1.explain, control_errors, "POST", response_model=None)
        for action in ("load", "unload"):
            path = f"/v2/repository/models/{{model_name}}/{action}"
            add(path, getattr(v2, action), {200: f"{action}ed", **control_errors}, "POST")


def mount_v1_predict(app: FastAPI, get_model: Callable[[], UpscalerModel | None]) -> None:
    """KServe's v1 predict, parsed here: ``{"instances": [<fal request>, ...]}``."""

    @app.post(
        V1 + ":predict",
        tags=["KServe v1"],
        summary="KServe v1 predict: each instance is a fal request",
        response_model=None,
        responses=openapi_responses(
            {
                200: '{"predictions": [<fal response>, ...]}',
                400: KServeErrorBody,
                404: KServeErrorBody,
                **INPUT_ERRORS,
                **REQUEST_ERRORS,
            }
        ),
    )
    async def predict(model_name: str, request: Request) -> JSONResponse:
        model = get_model()
        if model is None or not model.ready:
            raise not_ready()
        if model_name != model.name:
            return JSONResponse({"error": f"Model with name {model_name} does not exist."}, 404)
        try:
            payload = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            raise body_not_json(exc) from None
        try:
            return JSONResponse(await model.predict(payload, dict(request.headers.items())))
        except InvalidInput as exc:  # not {"instances": [...]}: KServe's own shape
            return JSONResponse({"error": str(exc)}, status_code=400)
