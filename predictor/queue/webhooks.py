"""Webhook delivery for queued requests: fal's body, signed, retried, and guarded like fetches.

Body (as fal sends it): ``{"request_id", "gateway_request_id", "status": "OK" | "ERROR",
"payload": <the result, or the error body>, "error"?: <message>}``.

Signature, when a secret is configured: ``X-Upscaler-Webhook-Signature: sha256=<hex>`` where
hex = HMAC-SHA256(secret, f"{request_id}.{timestamp}.".encode() + raw_body), with the timestamp
(Unix seconds) in ``X-Upscaler-Webhook-Timestamp``. Receivers recompute it over the raw body,
compare in constant time and reject stale timestamps (see :func:`verify_signature`).

Retry schedule (:func:`retry_delays`): ``--webhook-attempts`` tries (5), waiting
``--webhook-backoff-s`` (1 s) before the second and doubling after each: 1, 2, 4, 8 s, so a
receiver down for more than ~15 s (plus each try's 10 s timeout) misses the delivery. Then the
give-up is logged (``webhook request_id=… gave up``) and counted
(``upscaler_webhooks_total{outcome="given_up"}``); the result itself stays fetchable from the queue
until ``--queue-result-ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from predictor import metrics
from predictor.errors import InputError, UpscaleError, error_message
from predictor.fetch import guard_url, pinned_request, send_checked

log = logging.getLogger("predictor.queue.webhooks")

SIGNATURE_HEADER = "X-Upscaler-Webhook-Signature"
TIMESTAMP_HEADER = "X-Upscaler-Webhook-Timestamp"
REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"


@dataclass(frozen=True)
class WebhookSettings:
    secret: str | None = None
    allow_private_urls: bool = False
    attempts: int = 5
    first_backoff_s: float = 1.0
    timeout_s: float = 10.0


def retry_delays(settings: WebhookSettings) -> list[float]:
    """The waits between tries: the first backoff, doubling; one fewer than the attempts."""
    return [settings.first_backoff_s * 2**n for n in range(max(0, settings.attempts - 1))]


def webhook_body(request_id: str, result: dict[str, Any], failed: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "ERROR" if failed else "OK",
        "payload": result,
    }
    if failed:
        body["error"] = error_message(result)
    return body


def sign(secret: str, request_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{request_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    headers: dict[str, str],
    body: bytes,
    max_age_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse replays."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        request_id = lowered[REQUEST_ID_HEADER.lower()]
        signature = lowered[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > max_age_s:
        return False
    return hmac.compare_digest(signature, sign(secret, request_id, timestamp, body))


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """At submit, the guard that delivery applies again: a refused scheme, port or address is
    the client's to hear now. A name that does not resolve yet is left to delivery."""
    try:
        await guard_url(url, allow_private, what="fal_webhook")
    except InputError as exc:
        if exc.error_type == "url_not_allowed":
            raise


async def deliver_webhook(
    url: str,
    request_id: str,
    result: dict[str, Any],
    failed: bool,
    settings: WebhookSettings,
) -> bool:
    """POST the result to ``url``; retry with exponential backoff; True once it got a 2xx."""
    body = json.dumps(webhook_body(request_id, result, failed), separators=(",", ":")).encode()
    delays = retry_delays(settings)
    async with httpx.AsyncClient(
        timeout=settings.timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        for attempt in range(1, settings.attempts + 1):
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
            headers[TIMESTAMP_HEADER] = str(timestamp)
            if settings.secret:
                headers[SIGNATURE_HEADER] = sign(settings.secret, request_id, timestamp, body)
            try:
                request = await pinned_request(
                    client,
                    "POST",
                    url,
                    settings.allow_private_urls,
                    headers,
                    body,
                    what="fal_webhook",
                )
            except UpscaleError as exc:  # refused address or bad URL: retrying cannot help
                log.warning("webhook request_id=%s not sent: %s", request_id, exc)
                metrics.WEBHOOKS.labels("refused").inc()
                return False
            try:
                response = await send_checked(client, request, "fal_webhook")
                outcome = f"HTTP {response.status_code}"
                if response.is_success:
                    log.info("webhook request_id=%s delivered attempt=%d", request_id, attempt)
                    metrics.WEBHOOKS.labels("delivered").inc()
                    return True
            except (httpx.HTTPError, UpscaleError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            log.warning(
                "webhook request_id=%s attempt=%d/%d failed (%s)",
                request_id,
                attempt,
                settings.attempts,
                outcome,
            )
            if attempt < settings.attempts:
                await asyncio.sleep(delays[attempt - 1])
    log.error(
        "webhook request_id=%s gave up after %d attempts over %.0f s; the result stays fetchable "
        "from the queue until it expires",
        request_id,
        settings.attempts,
        sum(delays),
    )
    metrics.WEBHOOKS.labels("given_up").inc()
    return False
