"""Every route on the port was decided about: the app's route table, built as ``serve`` builds
it, holds only routes in ``kserve_routes.ROUTES``; the key guards exactly the routes that run
or change something; model control exists only behind its flag, and then behind the key."""

from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer

from predictor.api.access import ROUTES, Access
from predictor.api.auth import is_protected
from predictor.api.kserve_routes import register_kserve_routes, route_key
from predictor.config import Settings
from predictor.server import mount_routes
from tests.conftest import start_server, stop_server


def served_app(enable_model_control: bool) -> FastAPI:
    """The app as ``serve`` builds it: our routes, then KServe's as its server registers them."""
    app = FastAPI()
    absent = SimpleNamespace(ready=False, ready_upscaler=lambda: None, ready_queue=lambda: None)
    mount_routes(app, absent, Settings(api_keys=frozenset({"k"})))
    rest = RESTServer(app, DataPlane(model_registry=ModelRepository()), None, http_port=1)
    rest._register_endpoints = lambda target: register_kserve_routes(
        target, rest.dataplane, rest.model_repository_extension, enable_model_control
    )
    rest.create_application = lambda: rest._register_endpoints(app)
    rest.create_application()
    return app


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "chrono-upscaler", path)


@pytest.mark.parametrize("enable_model_control", [False, True])
def test_every_route_on_the_port_was_decided(enable_model_control: bool) -> None:
    app = served_app(enable_model_control)
    served = {key for route in app.router.routes for key in route_key(route)}
    # FastAPI's own pages (KServe's app turns /docs off unless --enable_docs_url)
    pages = {("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
    undecided = served - set(ROUTES) - pages
    assert not undecided, f"routes nobody decided about: {sorted(undecided)}"
    expected = {
        key
        for key, access in ROUTES.items()
        if enable_model_control or access is not Access.CONTROL
    }
    assert expected <= served, sorted(expected - served)
    control = {key for key, access in ROUTES.items() if access is Access.CONTROL}
    assert bool(control & served) is enable_model_control


@pytest.mark.parametrize(("key", "access"), sorted(ROUTES.items()))
def test_the_key_guards_what_runs_or_changes_something(key, access: Access) -> None:
    _, path = key
    assert is_protected(concrete(path)) is (access is not Access.OPEN), path


def test_model_control_is_off_by_default_and_keyed_when_on(server, tmp_path, monkeypatch) -> None:
    unload = "/v2/repository/models/chrono-upscaler/unload"
    assert httpx.post(server.url + unload).status_code == 404
    assert httpx.post(server.url + "/v1/models/chrono-upscaler:explain", json={}).status_code in (
        404,
        405,
    )
    server.assert_alive()
    monkeypatch.setenv("UPSCALER_API_KEYS", "secret")
    keyed = start_server(tmp_path, "--enable-model-control")
    try:
        refused = httpx.post(keyed.url + unload)
        assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"
        keyed.assert_alive()
        with_key = httpx.post(keyed.url + unload, headers={"Authorization": "Key secret"})
        assert with_key.status_code == 200, with_key.text
        # the operator asked for it: the model is gone until it is loaded again
        assert httpx.get(keyed.url + "/v1/models/chrono-upscaler").status_code in (404, 503)
    finally:
        stop_server(keyed)
