"""The playground's routes without a browser: ``GET /`` stays KServe's liveness JSON for probes
and curl and is the page only for browsers; ``/playground`` and its files; nothing external."""

from __future__ import annotations

import http.client
import re
from importlib import resources
from urllib.parse import urlsplit

import httpx
import pytest

from predictor.api.playground import ASSETS, prefers_html

ALIVE = {"status": "alive"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),  # curl, kubelet's probes
        ("application/json", False),
        ("text/*", False),  # not named outright
        ("application/json, text/html", False),  # a tie keeps the JSON
        ("text/html;q=0", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html;q=oops", False),
        ("text/html", True),
        ("TEXT/HTML", True),
        (BROWSER_ACCEPT, True),
        ("application/xhtml+xml", True),
        ("text/html, application/json;q=0.9", True),
    ],
)
def test_prefers_html(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def test_root_stays_kserve_liveness_for_probes(playground_server) -> None:
    url = playground_server.url
    for accept in ("application/json", "*/*"):
        answer = httpx.get(f"{url}/", headers={"Accept": accept}, timeout=10)
        assert answer.status_code == 200
        assert answer.json() == ALIVE
        assert "accept" in answer.headers["vary"].lower()
    # no Accept header at all (http.client sends none)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("GET", "/", skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type") == "application/json"
        assert httpx.Response(200, content=response.read()).json() == ALIVE
    finally:
        connection.close()


def test_root_is_the_page_for_browsers(playground_server) -> None:
    for accept in ("text/html", BROWSER_ACCEPT):
        page = httpx.get(f"{playground_server.url}/", headers={"Accept": accept}, timeout=10)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>chrono-upscaler playground</title>" in page.text
        assert page.headers["vary"] == "Accept"
    # other methods and paths are untouched
    assert httpx.post(f"{playground_server.url}/", headers={"Accept": "text/html"}).status_code == (
        405
    )


def test_playground_route_and_files(playground_server) -> None:
    url = playground_server.url
    page = httpx.get(f"{url}/playground", headers={"Accept": "application/json"}, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for name, media_type in ASSETS.items():
        asset = httpx.get(f"{url}/playground/{name}", timeout=10)
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == media_type
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{url}/playground/nope.js", timeout=10).status_code == 404
    assert httpx.get(f"{url}/playground/..%2Fserver.py", timeout=10).status_code == 404
    # the page lives outside the OpenAPI schema, and outside the keyed routes
    assert "/playground" not in httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]


def test_info_shows_the_hourly_price(playground_server) -> None:
    info = httpx.get(f"{playground_server.url}/info", timeout=10).json()
    assert info["gpu_hourly_usd"] == 2.4
    assert info["auth_required"] is False


def test_page_and_info_need_no_key(keyed_server) -> None:
    page = httpx.get(f"{keyed_server.url}/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and "playground" in page.text
    info = httpx.get(f"{keyed_server.url}/info", timeout=10).json()
    assert info["auth_required"] is True
    assert info["gpu_hourly_usd"] is None


def test_files_ship_in_the_package_and_load_nothing_external() -> None:
    directory = resources.files("predictor.api.playground")
    for name in ASSETS:
        text = (directory / name).read_text()
        assert text.strip(), name
        # every src/href/url() is relative to this server: no CDN, no other host
        references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']|url\(([^)]*)\)""", text)
        for reference in (value for pair in references for value in pair if value):
            assert not re.match(r"^(?:[a-z]+:)?//", reference.strip("'\"")), (name, reference)
    html = (directory / "index.html").read_text()
    assert 'src="playground/app.js"' in html and 'href="playground/style.css"' in html
