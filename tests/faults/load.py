"""A steady mix of sync and queued requests (queued ones with a webhook) over the replicas, and
the ledger of what became of each: the numbers of a fault's row."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.conftest import ServerProcess, data_uri, encode, photo_crop

SYNC = "/fal-ai/chrono-edit-lora-gallery/upscaler"
SUBMIT = "/queue/fal-ai/chrono-edit-lora-gallery/upscaler"
REQUESTS = "/queue/fal-ai/chrono-edit-lora-gallery/requests"

IMAGE = data_uri(encode(photo_crop(48, 32)))
#: a status that answers 404 this long is gone for good (a running request whose record Redis lost
#: is written again within one lease renewal, at most a second)
GONE_AFTER_S = 5.0


@dataclass
class Sent:
    """One request of the mix and what became of it."""

    kind: str  # "sync" | "queue"
    sent_at: float
    request_id: str | None = None
    #: refused at the door (429/503 with Retry-After, or no connection): never accepted
    refused: str | None = None
    retry_after: bool = False
    #: "ok", or why it failed ("503 store_unavailable", "connection", …); None while unsettled
    outcome: str | None = None
    settled_at: float | None = None
    #: accepted but gone: its status answered 404 to the end, or it never finished
    lost: str | None = None
    #: its status answered 404 at least once (Redis lost it; it may be recorded again)
    seen_404: bool = False
    first_404_at: float | None = None

    @property
    def accepted(self) -> bool:
        return self.refused is None


def answer_of(response: httpx.Response) -> str:
    try:
        kind = response.json().get("error_type")
    except ValueError:
        kind = None
    return f"{response.status_code} {kind or ''}".strip()


@dataclass
class Mix:
    """Submit ``rate`` requests a second, alternating replicas, one sync for every
    ``queue_per_sync`` queued ones, until :meth:`stop`; a pool of pollers follows each accepted
    queued request to its end (``COMPLETED`` and its result) on the other replica than the one
    that took it."""

    replicas: list[ServerProcess]
    webhook_url: str
    rate: float = 4.0
    queue_per_sync: int = 2
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._given_up = threading.Event()  # settle() is over: followers stop
        self._pool = ThreadPoolExecutor(max_workers=24)
        self._client = httpx.Client(timeout=httpx.Timeout(30, connect=3))
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._submit_loop, daemon=True)

    def start(self) -> Mix:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> list[ServerProcess]:
        return [srv for srv in self.replicas if srv.process.poll() is None] or self.replicas

    def _submit_loop(self) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            kind = "sync" if n % (self.queue_per_sync + 1) == 0 else "queue"
            live = self.alive()  # a Service stops sending to a replica that is gone
            target = live[n % len(live)]
            sent = Sent(kind, time.monotonic())
            with self._lock:
                self.sent.append(sent)
            self._pool.submit(self._sync if kind == "sync" else self._queue, sent, target)
            self._stop.wait(1 / self.rate)

    def close(self) -> None:
        """Stop everything (after a failure too): no thread outlives the fault."""
        self._stop.set()
        self._given_up.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _sync(self, sent: Sent, srv: ServerProcess) -> None:
        payload = {"image_url": IMAGE, "sync_mode": True}
        try:
            response = self._client.post(f"{srv.url}{SYNC}", json=payload, timeout=60)
        except httpx.ConnectError:
            sent.refused = "no connection"
            return
        except httpx.HTTPError as exc:  # the connection broke under it: the client knows
            self._settle(sent, f"connection ({type(exc).__name__})")
            return
        if response.status_code in (429, 503) and "retry-after" in response.headers:
            sent.refused, sent.retry_after = answer_of(response), True
            return
        self._settle(sent, "ok" if response.status_code == 200 else answer_of(response))

    def track(self, srv: ServerProcess, payload: dict) -> Sent:
        """Submit one queued request of the suite's own (a long one a fault must hit) and follow
        it like the mix's: it is counted in the fault's row."""
        sent = Sent("queue", time.monotonic())
        with self._lock:
            self.sent.append(sent)
        self._queue(sent, srv, payload, follow=False)
        if sent.request_id is not None:
            self._pool.submit(self._follow, sent, srv)
        return sent

    def _queue(
        self, sent: Sent, srv: ServerProcess, payload: dict | None = None, follow: bool = True
    ) -> None:
        payload = payload or {"image_url": IMAGE}  # a URL output: the output store holds it
        try:
            response = self._client.post(
                f"{srv.url}{SUBMIT}", params={"fal_webhook": self.webhook_url}, json=payload
            )
        except httpx.HTTPError as exc:
            sent.refused = f"no answer ({type(exc).__name__})"
            return
        if response.status_code != 200:
            sent.refused = answer_of(response)
            sent.retry_after = "retry-after" in response.headers
            sent.settled_at = time.monotonic()  # how long the refusal took: never a hang
            return
        sent.request_id = response.json()["request_id"]
        if follow:
            self._follow(sent, srv)

    def _follow(self, sent: Sent, took: ServerProcess) -> None:
        """Poll on the other replicas until COMPLETED; a success counts once its result is read
        and its output downloaded (from the bucket). A 404 means the request is gone: lost."""
        for n in itertools.count():
            if self._given_up.is_set():
                return
            replicas = [srv for srv in self.alive() if srv is not took] or self.alive()
            srv = replicas[n % len(replicas)]
            status = self._get(f"{srv.url}{REQUESTS}/{sent.request_id}/status")
            if status is None or status.status_code == 503:  # the queue is away for now
                time.sleep(0.2)
                continue
            if status.status_code == 404:  # gone, unless a running replica records it again
                sent.seen_404 = True
                sent.first_404_at = sent.first_404_at or time.monotonic()
                if time.monotonic() - sent.first_404_at > GONE_AFTER_S:
                    return self._lose(sent, f"404 for {GONE_AFTER_S:g} s")
                time.sleep(0.5)
                continue
            sent.first_404_at = None
            document = status.json()
            if document["status"] != "COMPLETED":
                time.sleep(0.2)
                continue
            if document.get("error_type"):
                return self._settle(sent, f"failed {document['error_type']}")
            result = self._get(f"{srv.url}{REQUESTS}/{sent.request_id}")
            if result is None or result.status_code != 200:
                if result is not None and result.status_code == 404:
                    return self._lose(sent, "404 on result")
                time.sleep(0.2)
                continue
            url = result.json()["images"][0]["url"]
            if url.startswith("data:"):  # sync_mode: the output is in the result itself
                return self._settle(sent, "ok")
            output = self._get(url)
            if output is not None and output.status_code == 200:
                return self._settle(sent, "ok")
            time.sleep(0.3)  # the output store is away: its file comes back with it

    def _get(self, url: str) -> httpx.Response | None:
        try:
            return self._client.get(url)
        except httpx.HTTPError:
            return None

    def _settle(self, sent: Sent, outcome: str) -> None:
        sent.outcome, sent.settled_at = outcome, time.monotonic()

    def _lose(self, sent: Sent, why: str) -> None:
        sent.lost, sent.settled_at = why, time.monotonic()

    def settle(self, timeout: float) -> None:
        """Wait for every accepted request to end; what has not by then is lost (it hangs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.outcome or s.lost or s.refused for s in self._snapshot()):
                break
            time.sleep(0.2)
        self._given_up.set()
        for sent in self._snapshot():
            if sent.accepted and sent.outcome is None and sent.lost is None:
                gone = "404 (gone from the queue)" if sent.seen_404 else None
                self._lose(sent, gone or f"not finished within {timeout:g} s")

    def _snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)
