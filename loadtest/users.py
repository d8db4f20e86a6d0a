"""The locust user: one image request per task, over fal's sync route or its queue.

* ``sync``: ``POST /fal-ai/chrono-edit-lora-gallery/upscaler``, then the output's download; an
  impatient client (the ``impatient`` profile) hangs up after its deadline instead.
* ``queue``: what fal's clients do — ``POST /queue/fal-ai/chrono-edit-lora-gallery/upscaler``,
  poll ``status_url?logs=1`` until ``COMPLETED`` (at once, then every 0.1 s, as fal_client),
  ``GET response_url``, then the download.

The user only ever talks to the URL it was given: the queue's ``status_url``/``response_url`` and
the outputs' URLs come from the server, and one that is not under the target URL is not followed
(the request fails as ``foreign_url``; an output is then not downloaded and counted as skipped).
Redirects are not followed either, and nothing is retried.

locust is imported only inside :func:`make_user_class`, so this module imports without gevent.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from loadtest.profiles import Payload
from loadtest.stats import (
    BAD_RESPONSE,
    CLIENT_EXCEPTION,
    CONNECTION_ERROR,
    FOREIGN_URL,
    GAVE_UP,
    TIMEOUT,
    HttpRecord,
    Recorder,
    RequestRecord,
    list_price_cents,
    status_class,
)

log = logging.getLogger("loadtest")

APP = "fal-ai/chrono-edit-lora-gallery/upscaler"
SYNC_PATH = f"/{APP}"
SUBMIT_PATH = f"/queue/{APP}"
#: route names in the results (ids and file names folded away)
ROUTE_SYNC = f"POST {SYNC_PATH}"
ROUTE_SUBMIT = f"POST {SUBMIT_PATH}"
ROUTE_STATUS = "GET /queue/fal-ai/chrono-edit-lora-gallery/requests/{id}/status"
ROUTE_RESULT = "GET /queue/fal-ai/chrono-edit-lora-gallery/requests/{id}"
ROUTE_FILE = "GET /files/{file_name}"

MODES = ("sync", "queue")


@dataclass(frozen=True)
class UserSettings:
    base_url: str
    mode: str = "sync"
    key: str | None = None
    #: seconds: no answer for this long (or a queue journey longer than this) is a timeout
    timeout_s: float = 330.0
    #: fal_client's default
    poll_interval_s: float = 0.1
    #: seconds a user waits after a 429/503 before its next request
    shed_backoff_s: float = 0.2
    #: True: outputs come back as data: URIs; False (fal's default): as URLs, downloaded
    sync_mode: bool = False
    ca_file: str | None = None
    insecure: bool = False
    seed: int = 0


def _port(parts) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())


def under_base(url: str, base: str) -> bool:
    """True when ``url`` has ``base``'s scheme, host and port and lies under its path."""
    try:
        target, root = urlsplit(url), urlsplit(base)
        same_place = (
            target.scheme.lower() == root.scheme.lower()
            and (target.hostname or "").lower() == (root.hostname or "").lower()
            and _port(target) == _port(root)
            and target.username is None
        )
    except ValueError:  # a malformed port
        return False
    prefix = root.path.rstrip("/")
    return same_place and (target.path == prefix or target.path.startswith(prefix + "/"))


def _seconds_between(first: str, last: str) -> float:
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def queue_phases(logs: Sequence[dict]) -> tuple[float | None, float | None]:
    """(wait, run) seconds from a completed request's status logs: ``queued`` → ``started on an
    engine worker`` → ``completed``/``failed: …``. None for a phase the logs do not show."""
    stamps: dict[str, str] = {}
    for line in logs:
        message = line.get("message", "")
        if message == "queued":
            stamps.setdefault("queued", line["timestamp"])
        elif message == "started on an engine worker":
            stamps.setdefault("started", line["timestamp"])
        elif message == "completed" or message.startswith("failed"):
            stamps["finished"] = line["timestamp"]
    wait = run = None
    if "queued" in stamps and "started" in stamps:
        wait = _seconds_between(stamps["queued"], stamps["started"])
    if "started" in stamps and "finished" in stamps:
        run = _seconds_between(stamps["started"], stamps["finished"])
    return wait, run


def error_status(error: BaseException | None) -> str:
    """A client-side failure as a status: ``timeout`` or ``connection_error``."""
    seen = error
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timed out" in str(seen).lower():
            return TIMEOUT
        if type(seen).__name__ == "Timeout":  # gevent.Timeout, without importing gevent here
            return TIMEOUT
        seen = getattr(seen, "original", None)
    return CONNECTION_ERROR


def with_logs(status_url: str) -> str:
    return status_url + ("&" if "?" in status_url else "?") + "logs=1"


def delivered(body: dict) -> list[tuple[str, int, int]]:
    """(url, width, height) of each image in a fal response; ValueError when malformed."""
    try:
        return [
            (image["url"], int(image["width"]), int(image["height"])) for image in body["images"]
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a fal response: {exc}") from exc


@dataclass(frozen=True)
class _Answer:
    """A response read with http.client, shaped as ``_deliver`` reads locust's."""

    content: bytes

    def json(self):
        return json.loads(self.content)


def make_user_class(settings: UserSettings, pool: Sequence[Payload], recorder: Recorder) -> type:
    """A FastHttpUser subclass bound to this run's settings, pool and recorder."""
    import gevent
    import gevent.ssl
    from locust import FastHttpUser, task

    base = settings.base_url.rstrip("/")
    api_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.key:
        api_headers["Authorization"] = f"Key {settings.key}"
    order = list(range(len(pool)))
    random.Random(settings.seed).shuffle(order)
    next_index = itertools.cycle(order).__next__
    warned: list[str] = []  # foreign URLs are reported once

    def ssl_context():
        if settings.insecure:
            context = gevent.ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = gevent.ssl.CERT_NONE
            return context
        return gevent.ssl.create_default_context(cafile=settings.ca_file)

    class UpscalerUser(FastHttpUser):
        host = base
        network_timeout = settings.timeout_s
        connection_timeout = min(settings.timeout_s, 30.0)
        max_retries = 0
        max_redirects = 0
        insecure = settings.insecure
        ssl_context_factory = staticmethod(ssl_context)

        def on_start(self) -> None:
            self._backoff = 0.0

        def wait_time(self) -> float:
            backoff, self._backoff = self._backoff, 0.0
            return 1.0 if recorder.stopping else backoff

        @task
        def upscale(self) -> None:
            if recorder.stopping:
                # locust kills waiting users asynchronously at the stop: one may wake up first
                return
            payload = pool[next_index()]
            recorder.begin()
            started = time.perf_counter()
            try:
                if settings.mode == "queue":
                    record = self._queue(payload, started)
                else:
                    record = self._sync(payload, started)
            except Exception:
                log.exception("the %s request failed in the client", settings.mode)
                record = self._record(started, CLIENT_EXCEPTION)
            recorder.add_request(record)
            if record.outcome == "shed":
                self._backoff = settings.shed_backoff_s

        # one HTTP call, recorded under its route
        def _call(self, method: str, url: str, route: str, body: bytes | None = None, api=True):
            started = time.perf_counter()
            response = self.client.request(
                method,
                url,
                name=route,
                data=body,
                headers=api_headers if api else {},
                allow_redirects=False,
            )
            latency = time.perf_counter() - started
            code = response.status_code or 0
            status = str(code) if code else error_status(getattr(response, "error", None))
            recorder.add_http(HttpRecord(route, status, started - recorder.t0, latency))
            return response, status

        def _record(self, started: float, status: str, **fields) -> RequestRecord:
            return RequestRecord(
                mode=settings.mode,
                status=status,
                started=started - recorder.t0,
                latency_s=time.perf_counter() - started,
                **fields,
            )

        def _deliver(self, response, started: float, status: str, **fields) -> RequestRecord:
            """A successful answer's images: checked, downloaded unless inline, priced."""
            try:
                images = delivered(response.json())
            except ValueError:
                return self._record(started, BAD_RESPONSE)
            for url, _, _ in images:
                if settings.sync_mode or url.startswith("data:"):
                    continue
                if not under_base(url, base):
                    recorder.skipped_downloads += 1
                    continue
                _, download = self._call("GET", url, ROUTE_FILE, api=False)
                if status_class(download) != "accepted":
                    return self._record(started, download, **fields)
            return self._record(
                started,
                status,
                images=len(images),
                list_price_cents=sum(list_price_cents(w, h) for _, w, h in images),
                output_pixels=sum(w * h for _, w, h in images),
                **fields,
            )

        def _sync(self, payload: Payload, started: float) -> RequestRecord:
            if payload.spec.give_up_s is not None:
                return self._impatient(payload, started, payload.spec.give_up_s)
            response, status = self._call("POST", base + SYNC_PATH, ROUTE_SYNC, payload.body)
            if status_class(status) != "accepted":
                return self._record(started, status)
            return self._deliver(response, started, status)

        def _impatient(self, payload: Payload, started: float, give_up_s: float) -> RequestRecord:
            """The sync call from a client that hangs up (closes its connection) after
            ``give_up_s``; an answer in time is delivered as usual."""
            parts = urlsplit(base)
            if parts.scheme == "https":
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    parts.hostname, _port(parts), timeout=give_up_s, context=ssl_context()
                )
            else:
                connection = http.client.HTTPConnection(
                    parts.hostname, _port(parts), timeout=give_up_s
                )
            call_started = time.perf_counter()
            try:
                connection.request("POST", parts.path + SYNC_PATH, payload.body, api_headers)
                answer = connection.getresponse()
                status, body = str(answer.status), answer.read()
            except TimeoutError:
                status, body = GAVE_UP, b""
            except OSError as exc:
                status, body = error_status(exc), b""
            finally:
                connection.close()  # hanging up is what the server notices
            latency = time.perf_counter() - call_started
            recorder.add_http(HttpRecord(ROUTE_SYNC, status, call_started - recorder.t0, latency))
            if status_class(status) != "accepted":
                return self._record(started, status)
            return self._deliver(_Answer(body), started, status)

        def _queue(self, payload: Payload, started: float) -> RequestRecord:
            response, status = self._call("POST", base + SUBMIT_PATH, ROUTE_SUBMIT, payload.body)
            if status_class(status) != "accepted":
                return self._record(started, status)
            try:
                handle = response.json()
                status_url, response_url = handle["status_url"], handle["response_url"]
            except (ValueError, KeyError, TypeError):
                return self._record(started, BAD_RESPONSE)
            if not (under_base(status_url, base) and under_base(response_url, base)):
                if not warned:
                    warned.append(status_url)
                    log.warning("not following %s (nor the like): not under %s", status_url, base)
                return self._record(started, FOREIGN_URL)
            deadline = started + settings.timeout_s
            while True:  # as fal_client does: ask at once, then every poll interval
                polled, status = self._call("GET", with_logs(status_url), ROUTE_STATUS)
                if status_class(status) != "accepted":
                    return self._record(started, status)
                try:
                    document = polled.json()
                    finished = document["status"] == "COMPLETED"
                except (ValueError, KeyError, TypeError):
                    return self._record(started, BAD_RESPONSE)
                if finished:
                    break
                if time.perf_counter() > deadline:
                    return self._record(started, TIMEOUT)
                gevent.sleep(settings.poll_interval_s)
            wait, run = queue_phases(document.get("logs") or [])
            inference = (document.get("metrics") or {}).get("inference_time")
            fields = {"queue_wait_s": wait, "queue_run_s": run, "inference_s": inference}
            result, status = self._call("GET", response_url, ROUTE_RESULT)
            if status_class(status) != "accepted":
                return self._record(started, status, **fields)
            return self._deliver(result, started, status, **fields)

    return UpscalerUser
