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
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which a translator or tunnel would reach.

    IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), 6to4 (``2002::/16``),
    Teredo (the client address) and NAT64 (``64:ff9b::/96``; the local-use ``64:ff9b:1::/48``
    may embed at /48 or /96, so both places are judged).
    """
    found = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    packed = ip.packed
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(packed[12:]))
    if ip in _NAT64_LOCAL:  # where the operator's prefix length puts it; zeros are padding
        places = {
            ipaddress.IPv4Address(packed[12:]),
            ipaddress.IPv4Address(packed[6:8] + packed[9:11]),
        }
        found += [place for place in places if int(place)] or [ipaddress.IPv4Address(0)]
    return [address for address in found if address is not None]


def refusal_reason(ip: IPAddress, allow_private: bool) -> str | None:
    """Why ``ip`` must not be reached, or None when it may be; an IPv6 address that carries an
    IPv4 address is judged by that address (a NAT64 gateway or tunnel would connect there)."""
    if isinstance(ip, ipaddress.IPv6Address):
        for carried in embedded_ipv4(ip):
            reason = refusal_reason(carried, allow_private)
            if reason:
                return reason
        if ip in _NAT64 or ip.ipv4_mapped or ip.sixtofour or ip.teredo:
            return None  # judged by the address it carries
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
    refused, since the client library could pick either. The refusal names the kind of address,
    never the address, so the service cannot be used to learn what internal names resolve to.
    """
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        addresses: list[IPAddress] = [literal]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise download_error(f"Could not resolve host {host!r}: {exc}.", _loc(what)) from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise download_error(f"Host {host!r} has no address.", _loc(what))
    for ip in addresses:
        reason = refusal_reason(ip, allow_private)
        if reason:
            raise url_not_allowed(
                f"{what} host {host!r} is or resolves to {reason}; connecting to it is not "
                "allowed (the operator can allow private addresses with --allow-private-urls).",
                _loc(what),
            )
    return addresses[0]


def check_url(url: str, what: str = "image_url") -> tuple[httpx.URL, int]:
    """The URL's syntax, scheme (http or https only) and port (1–65535), before any DNS."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise url_not_allowed(f"{what} is not a valid URL: {exc}.", _loc(what)) from None
    if parsed.scheme not in ("http", "https"):
        alternatives = "http, https or a data: URI" if what == "image_url" else "http or https"
        raise url_not_allowed(
            f"{what} scheme {parsed.scheme or '(none)'!r} is not supported; use {alternatives}.",
            _loc(what),
        )
    if not parsed.host:
        raise url_not_allowed(f"{what} has no host.", _loc(what))
    if port is None:
        port = 443 if parsed.scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise url_not_allowed(f"{what} port {port} is outside 1–65535.", _loc(what))
    return parsed, port


async def guard_url(
    url: str, allow_private: bool, what: str = "image_url"
) -> tuple[httpx.URL, int, IPAddress]:
    """The one URL guard of fetches, redirect hops and webhooks: syntax, scheme, port, then
    every address the host resolves to; returns the address to connect to."""
    parsed, port = check_url(url, what)
    return parsed, port, await resolve_checked(parsed.host, port, allow_private, what)


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
    parsed, port, ip = await guard_url(url, allow_private, what)
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{port}"
    return client.build_request(
        method,
        parsed.copy_with(host=str(ip)),
        headers={"Host": host_header, "User-Agent": USER_AGENT, **headers},
        content=content,
        extensions={"sni_hostname": parsed.host},
    )


async def send_checked(
    client: httpx.AsyncClient, request: httpx.Request, what: str = "image_url", stream: bool = False
) -> httpx.Response:
    """``client.send``, where a redirect's ``Location`` that is no http(s) URL (``data:``,
    ``mailto:``, ``javascript:``) is a refusal: httpx parses it while building the next request,
    even when it does not follow redirects."""
    try:
        return await client.send(request, stream=stream)
    except httpx.InvalidURL:
        raise url_not_allowed(
            f"{what} redirected to a location that is not an http(s) URL.", _loc(what)
        ) from None


def _loc(what: str) -> tuple[str, ...]:
    return ("query", what) if what == "fal_webhook" else ("body", what)


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
                response = await send_checked(client, request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
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
    if url[:5].lower() == "data:":  # tens of MB of base64: decoded off the event loop
        return await asyncio.to_thread(decode_data_uri, url, limits.max_bytes)
    return await fetch_url(url, limits)
