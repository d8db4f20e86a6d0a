"""image_url fetching: data: URIs, address guards, redirects, size and time limits."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from predictor.config import FetchLimits
from predictor.errors import InputError
from predictor.fetch import decode_data_uri, fetch_image_bytes, refusal_reason
from predictor.queue.webhooks import WebhookSettings, check_webhook_url, deliver_webhook
from tests.conftest import data_uri


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd12::1", "a private address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("100.64.0.1", "a non-public address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        # IPv6 forms that carry an IPv4 address are judged by the address they carry
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 → 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 → 169.254.169.254
        ("64:ff9b::a00:1", "a private address"),  # NAT64 → 10.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 → 8.8.8.8
        ("64:ff9b:1::7f00:1", "a loopback address"),  # local-use NAT64, /96 form
        ("64:ff9b:1:7f00:0:100::", "a loopback address"),  # local-use NAT64, /48 form
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "a cloud metadata address"),  # 6to4 of 169.254.169.254
        ("2002:c0a8:101::", "a private address"),  # 6to4 of 192.168.1.1
        ("2002:808:808::", None),  # 6to4 of 8.8.8.8
        ("::127.0.0.1", "a loopback address"),  # IPv4-compatible
        ("::169.254.169.254", "a cloud metadata address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "a private address"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a loopback address"),  # Teredo → 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:f7f5", "a private address"),  # Teredo → 10.0.8.10
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),  # Teredo → 8.8.8.8
    ],
)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private=False) == reason


def test_metadata_stays_refused_in_every_form_with_private_allowed() -> None:
    for address in ("64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::169.254.169.254"):
        reason = refusal_reason(ipaddress.ip_address(address), allow_private=True)
        assert reason == "a cloud metadata address", address


def test_private_flag_allows_private_but_never_metadata() -> None:
    assert refusal_reason(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert refusal_reason(ipaddress.ip_address("10.0.0.1"), allow_private=True) is None
    assert refusal_reason(ipaddress.ip_address("169.254.169.254"), allow_private=True) == (
        "a cloud metadata address"
    )


def test_data_uri_roundtrip_and_errors() -> None:
    assert decode_data_uri(data_uri(b"hello"), 100) == b"hello"
    assert decode_data_uri("data:image/png,abc%20d", 100) == b"abc d"
    with pytest.raises(InputError) as bad:
        decode_data_uri("data:image/png;base64,@@@@", 100)
    assert bad.value.status_code == 400 and bad.value.error_type == "image_load_error"
    with pytest.raises(InputError) as big:
        decode_data_uri(data_uri(b"x" * 1000), 100)
    assert big.value.status_code == 413 and big.value.ctx == {"max_bytes": 100}
    with pytest.raises(InputError) as malformed:
        decode_data_uri("data:image/png;base64", 100)
    assert malformed.value.status_code == 400
    with pytest.raises(InputError):
        decode_data_uri("data:image/png;base64,", 100)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/"])
def test_refused_schemes(url: str) -> None:
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes(url, FetchLimits()))
    assert err.value.error_type == "url_not_allowed"
    assert err.value.loc == ["body", "image_url"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.9.9.9"])
def test_loopback_refused_without_flag(host: str, image_host) -> None:
    port = image_host.url.rsplit(":", 1)[1]
    image_host.add("/ok.png", b"\x89PNG")
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes(f"http://{host}:{port}/ok.png", FetchLimits()))
    assert err.value.error_type == "url_not_allowed"
    assert "--allow-private-urls" in err.value.msg


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[::127.0.0.1]",
        "[::ffff:7f00:1]",
        "[64:ff9b::a9fe:a9fe]",
    ],
)
def test_embedded_ipv4_refused_without_the_ip_in_the_message(host: str) -> None:
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes(f"http://{host}/x.png", FetchLimits()))
    assert err.value.error_type == "url_not_allowed"
    assert "loopback" in err.value.msg or "metadata" in err.value.msg
    assert "resolves to 1" not in err.value.msg


def test_refusal_never_names_the_resolved_address(image_host) -> None:
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes("http://localhost:1/x.png", FetchLimits()))
    assert "a loopback address" in err.value.msg
    assert "127.0.0.1" not in err.value.msg and "::1" not in err.value.msg


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com:0/x.png", "port 0 is outside 1–65535"),
        ("http://example.com:65536/x.png", "port 65536 is outside 1–65535"),
        ("http://example.com:99999999999/x.png", "is outside 1–65535"),
        ("http://example.com:-1/x.png", "port -1 is outside"),
        ("http:///x.png", "no host"),
        ("http://[::1/x.png", "not a valid URL"),
    ],
)
def test_ports_and_malformed_urls_are_400(url: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes(url, FetchLimits(allow_private_urls=True)))
    assert err.value.status_code == 400 and err.value.error_type == "url_not_allowed"
    assert words in err.value.msg


@pytest.mark.parametrize(
    "location",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "mailto:someone@example.com",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://127.0.0.1:0/x.png",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "//169.254.169.254/latest",
        "http://[::ffff:a9fe:a9fe]/",
    ],
)
def test_every_redirect_hop_goes_through_the_guard(image_host, location: str) -> None:
    limits = FetchLimits(allow_private_urls=True)
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes(f"{image_host.url}/redirect?to={location}", limits))
    assert err.value.status_code == 400, err.value.msg
    assert err.value.error_type == "url_not_allowed", err.value.msg


def test_fetch_ok_with_flag(image_host) -> None:
    url = image_host.add("/fetch-ok.png", b"PNGDATA" * 10)
    assert run(fetch_image_bytes(url, FetchLimits(allow_private_urls=True))) == b"PNGDATA" * 10


def test_redirects_are_followed_and_rechecked(image_host) -> None:
    target = image_host.add("/target.png", b"target-bytes")
    limits = FetchLimits(allow_private_urls=True)
    assert run(fetch_image_bytes(f"{image_host.url}/redirect?to={target}", limits)) == (
        b"target-bytes"
    )
    with pytest.raises(InputError) as metadata:
        run(fetch_image_bytes(f"{image_host.url}/redirect?to=http://169.254.169.254/", limits))
    assert metadata.value.error_type == "url_not_allowed"
    with pytest.raises(InputError) as scheme:
        run(fetch_image_bytes(f"{image_host.url}/redirect?to=file:///etc/passwd", limits))
    assert scheme.value.error_type == "url_not_allowed"
    with pytest.raises(InputError) as loop:
        run(fetch_image_bytes(f"{image_host.url}/loop", limits))
    assert "redirected more than 3 times" in loop.value.msg


def test_http_errors_and_limits(image_host) -> None:
    limits = FetchLimits(allow_private_urls=True, max_bytes=1000, total_timeout_s=1.0)
    with pytest.raises(InputError) as missing:
        run(fetch_image_bytes(f"{image_host.url}/missing.png", limits))
    assert missing.value.status_code == 400 and "HTTP 404" in missing.value.msg
    big = image_host.add("/big.png", b"x" * 5000)
    with pytest.raises(InputError) as declared:
        run(fetch_image_bytes(big, limits))
    assert declared.value.status_code == 413
    with pytest.raises(InputError) as streamed:
        run(fetch_image_bytes(f"{image_host.url}/endless", limits))
    assert streamed.value.status_code == 413
    with pytest.raises(InputError) as slow:
        run(fetch_image_bytes(f"{image_host.url}/slow", limits))
    assert slow.value.error_type == "file_download_error" and "1 s" in slow.value.msg


def test_unresolvable_host() -> None:
    with pytest.raises(InputError) as err:
        run(fetch_image_bytes("http://no-such-host.invalid/x.png", FetchLimits()))
    assert err.value.error_type == "file_download_error"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://169.254.169.254/latest",
        "http://example.com:0/hook",
        "mailto:a@example.com",
    ],
)
def test_webhook_urls_meet_the_same_guard_at_submit(url: str) -> None:
    with pytest.raises(InputError) as err:
        run(check_webhook_url(url, allow_private=False))
    assert err.value.error_type == "url_not_allowed"
    assert err.value.loc == ["query", "fal_webhook"]


def test_webhook_names_that_do_not_resolve_yet_are_left_to_delivery() -> None:
    run(check_webhook_url("https://no-such-host.invalid/hook", allow_private=False))


class RedirectingReceiver(BaseHTTPRequestHandler):
    """A webhook receiver that answers every POST with a redirect to a mailto: URL."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(307)
        self.send_header("Location", "mailto:a@example.com")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_webhook_delivery_checks_again_and_never_raises(caplog) -> None:
    settings = WebhookSettings(attempts=1, first_backoff_s=0)
    assert run(deliver_webhook("http://127.0.0.1:9/hook", "r1", {}, False, settings)) is False
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), RedirectingReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        allowed = WebhookSettings(allow_private_urls=True, attempts=1, first_backoff_s=0)
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        assert run(deliver_webhook(url, "r2", {}, False, allowed)) is False
        assert "not an http(s) URL" in caplog.text
    finally:
        receiver.shutdown()
