"""image_url fetching: data: URIs, address guards, redirects, size and time limits."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from predictor.config import FetchLimits
from predictor.errors import InputError
from predictor.fetch import decode_data_uri, fetch_image_bytes, refusal_reason
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
    ],
)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private=False) == reason


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
