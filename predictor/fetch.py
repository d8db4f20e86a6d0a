"""Fetch ``image_url``: a ``data:`` URI or an http(s) URL, guarded like a production service must.

* only ``http``, ``https`` and ``data``;
* every address a host name resolves to must be public (no loopback, private, link-local, CGNAT
  or reserved ranges) unless ``allow_private_urls`` is set; cloud metadata addresses are refused
  even then. The connection goes to the address that was checked (the host name is kept for the
  ``Host`` header and TLS), so DNS cannot be re-pointed between the check and the connect;
* redirects are followed by hand, at most ``max_redirects``, each hop checked again;
* connect, read and total timeouts; a size limit on the body and on ``data:`` URIs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from urllib.parse import unquote_to_bytes, urljoin

import httpx

from predictor.config import FetchLimits
from predictor.errors import download_error, file_too_large, image_load_error, url_not_allowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: instance metadata services (AWS/GCP/Azure/OpenStack, AWS over IPv6, Alibaba): never fetched
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
USER_AGENT = "chrono-upscaler/0.1 (+image fetch)"
_CHUNK = 64 * 1024


def refusal_reason(ip: IPAddress, allow_private: bool) -> str | None:
    """Why ``ip`` must not be fetched from, or None when it may be."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:
        return None
    for attribute, label in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_private", "a private address"),
    ):
        if getattr(ip, attribute):
            return label
    if not ip.is_global:
        return "a non-public address"
    return None


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """Bytes of a ``data:[<type>][;base64],<payload>`` URI, refusing payloads over ``max_bytes``."""
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise image_load_error("Malformed data: URI: expected 'data:<type>;base64,<payload>'.")
    is_base64 = header.lower().endswith(";base64")
    estimated = len(payload) * 3 // 4 if is_base64 else len(payload)
    if estimated > max_bytes:
        raise file_too_large(
            f"The data: URI carries about {estimated} bytes; the limit is {max_bytes}.", max_bytes
        )
    if not is_base64:
        data = unquote_to_bytes(payload)
    else:
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise image_load_error(f"The data: URI is not valid base64: {exc}.") from None
    if len(data) > max_bytes:
        raise file_too_large(
            f"The data: URI carries {len(data)} bytes; the limit is {max_bytes}.", max_bytes
        )
    if not data:
        raise image_load_error("The data: URI is empty.")
    return data


async def resolve_checked(
    host: str, port: int, allow_private: bool, what: str = "image_url"
) -> IPAddress:
    """Resolve ``host`` and return an address to connect to; refuse if any address is forbidden.

    Every address must pass: a name that resolves to one public and one private address is
    refused, since the client library could pick either.
    """
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        addresses: list[IPAddress] = [literal]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise download_error(f"Could not resolve host {host!r}: {exc}.") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise download_error(f"Host {host!r} has no address.")
    for ip in addresses:
        reason = refusal_reason(ip, allow_private)
        if reason:
            raise url_not_allowed(
                f"{what} host {host!r} resolves to {ip}, {reason}; connecting to it is not "
                "allowed (the operator can allow private addresses with --allow-private-urls)."
            )
    return addresses[0]


def check_scheme(url: str, what: str = "image_url") -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise url_not_allowed(f"{what} is not a valid URL: {exc}.") from None
    if parsed.scheme not in ("http", "https"):
        alternatives = "http, https or a data: URI" if what == "image_url" else "http or https"
        raise url_not_allowed(
            f"{what} scheme {parsed.scheme or '(none)'!r} is not supported; use {alternatives}."
        )
    if not parsed.host:
        raise url_not_allowed(f"{what} has no host.")
    return parsed


async def pinned_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    allow_private: bool,
    headers: dict[str, str],
    content: bytes | None = None,
    what: str = "image_url",
) -> httpx.Request:
    """A request to ``url`` whose connection goes to the address that was checked.

    The host name stays in the ``Host`` header and TLS (SNI and certificate checks).
    """
    parsed = check_scheme(url, what)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ip = await resolve_checked(parsed.host, port, allow_private, what)
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{port}"
    return client.build_request(
        method,
        parsed.copy_with(host=str(ip)),
        headers={"Host": host_header, "User-Agent": USER_AGENT, **headers},
        content=content,
        extensions={"sni_hostname": parsed.host},
    )


async def fetch_url(url: str, limits: FetchLimits) -> bytes:
    """GET an http(s) URL under ``limits``; see the module docstring for the guards."""
    timeout = httpx.Timeout(
        connect=limits.connect_timeout_s,
        read=limits.read_timeout_s,
        write=limits.read_timeout_s,
        pool=limits.connect_timeout_s,
    )
    try:
        async with (
            asyncio.timeout(limits.total_timeout_s),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        ):
            for _ in range(limits.max_redirects + 1):
                request = await pinned_request(
                    client, "GET", url, limits.allow_private_urls, {"Accept": "image/*"}
                )
                parsed = check_scheme(url)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(str(parsed), response.headers["location"])
                        continue
                    return await _read_body(response, limits.max_bytes)
                finally:
                    await response.aclose()
            raise download_error(f"image_url redirected more than {limits.max_redirects} times.")
    except TimeoutError:
        raise download_error(
            f"Downloading image_url took longer than {limits.total_timeout_s:g} s."
        ) from None
    except httpx.TimeoutException as exc:
        raise download_error(f"Downloading image_url timed out ({type(exc).__name__}).") from None
    except httpx.HTTPError as exc:
        raise download_error(
            f"Downloading image_url failed: {exc or type(exc).__name__}."
        ) from None


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    if response.status_code != 200:
        raise download_error(f"image_url answered HTTP {response.status_code}; expected 200.")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise file_too_large(f"image_url is {declared} bytes; the limit is {max_bytes}.", max_bytes)
    body = bytearray()
    async for chunk in response.aiter_bytes(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise file_too_large(f"image_url is over the {max_bytes}-byte limit.", max_bytes)
    if not body:
        raise image_load_error("image_url returned an empty body.")
    return bytes(body)


async def fetch_image_bytes(url: str, limits: FetchLimits) -> bytes:
    """The raw bytes behind ``image_url``: decoded ``data:`` URI or downloaded body."""
    if url[:5].lower() == "data:":
        return decode_data_uri(url, limits.max_bytes)
    return await fetch_url(url, limits)
