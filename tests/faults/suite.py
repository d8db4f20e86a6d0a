"""The fault suite: two replicas on a real Redis (one of them through a TCP proxy the suite
controls), outputs in a real S3 server (SeaweedFS), webhooks to a receiver the suite can take
down — and one fault after another injected while a steady mix of sync and queued requests runs.

Each fault gives a :class:`Row`: requests accepted, completed, failed with a status, lost,
duplicate webhooks, webhooks delivered, and the time from the fault's end to the first request
sent after it that completed. ``python -m tests.faults`` (``make chaos``) runs it at full length;
``tests/faults/test_faults.py`` runs the short form with the suite's assertions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.conftest import ServerProcess, data_uri, encode, photo_crop, stop_server
from tests.faults.load import REQUESTS, SUBMIT, Mix, Sent
from tests.faults.parts import (
    S3_ENV,
    RedisServer,
    SeaweedS3,
    TcpProxy,
    WebhookReceiver,
    launch,
    metric,
    readiness,
    wait_for,
    wait_ready,
)

PREFIX = "faults"
#: a lease short enough that a lapse shows within the suite, as the replicas are started with
LEASE_S = 2
#: webhook tries and first backoff of the replicas: a 1.5 s retry window (0.5 + 1 s)
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Timing:
    """How long each part of a fault lasts (seconds) and how fast the mix sends."""

    before_s: float
    hold_s: float
    after_s: float
    settle_s: float
    rate: float


SHORT = Timing(before_s=1.0, hold_s=4.0, after_s=2.0, settle_s=40.0, rate=4.0)
FULL = Timing(before_s=4.0, hold_s=10.0, after_s=6.0, settle_s=90.0, rate=6.0)


@dataclass
class Row:
    fault: str
    accepted: int = 0
    completed: int = 0
    failed: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    lost: int = 0
    lost_why: Counter = field(default_factory=Counter)
    duplicates: int = 0
    webhooks: int = 0
    #: accepted queued requests that ended (each one's webhook is due)
    queued_ended: int = 0
    recover_s: float | None = None
    #: what the fault's own checks saw (printed under the table) and the same as data (asserted)
    notes: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: the sent requests, for the assertions
    sent: list[Sent] = field(default_factory=list)


@dataclass
class Rig:
    tmp: Path
    redis: RedisServer
    proxy: TcpProxy
    s3: SeaweedS3
    receiver: WebhookReceiver
    a: ServerProcess | None = None
    b: ServerProcess | None = None

    def replicas(self) -> list[ServerProcess]:
        return [srv for srv in (self.a, self.b) if srv is not None]

    def alive(self) -> list[ServerProcess]:
        return [srv for srv in self.replicas() if srv.process.poll() is None]

    def flags(self, redis_url: str) -> list[str]:
        return [
            "--redis-url", redis_url, "--redis-prefix", PREFIX,
            "--output-store", f"s3://{self.s3.bucket}/out", "--s3-endpoint-url", self.s3.endpoint,
            "--queue-lease", str(LEASE_S), "--max-inflight", "1", "--tile-size", "64",
            "--allow-private-urls", "--queue-result-ttl", "900",
            "--webhook-attempts", str(WEBHOOK_ATTEMPTS),
            "--webhook-backoff", str(WEBHOOK_BACKOFF_S),
        ]  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, decode_responses=True, socket_timeout=2)

    def close(self) -> None:
        for srv in self.replicas():
            stop_server(srv)
        self.receiver.close()
        self.s3.stop()
        self.redis.stop()


def long_job() -> dict:
    """Seconds of engine work in 64 px tiles (cancellable between them): a fault hits it mid-run."""
    return {"image_url": data_uri(encode(photo_crop(512, 512))), "sync_mode": True}


def tally(fault: str, sent: list[Sent], receiver: WebhookReceiver, healed_at: float) -> Row:
    row = Row(fault, sent=sent)
    for item in sent:
        if item.refused is not None:
            row.refused[item.refused] += 1
            continue
        row.accepted += 1
        if item.lost is not None:
            row.lost += 1
            row.lost_why[item.lost] += 1
        elif item.outcome == "ok":
            row.completed += 1
        else:
            row.failed[item.outcome] += 1
        if item.kind == "queue" and item.request_id is not None:
            row.queued_ended += item.lost is None
            count = receiver.count(item.request_id)
            row.webhooks += count > 0
            row.duplicates += max(0, count - 1)
    recovered = [
        item.settled_at - healed_at
        for item in sent
        if item.sent_at >= healed_at and item.outcome == "ok" and item.settled_at
    ]
    row.recover_s = min(recovered) if recovered else None
    refusals = [item.settled_at - item.sent_at for item in sent if item.refused and item.settled_at]
    if refusals:
        row.facts["slowest_refusal_s"] = round(max(refusals), 1)
    return row


def run_fault(
    rig: Rig,
    fault: str,
    inject: Callable[[Mix], None],
    heal: Callable[[], None],
    timing: Timing,
) -> Row:
    """The mix runs; ``inject`` at ``before_s``; ``heal`` after ``hold_s``; the mix runs
    ``after_s`` more; then every accepted request gets ``settle_s`` to end."""
    mix = Mix(rig.alive(), rig.receiver.url, rate=timing.rate).start()
    try:
        time.sleep(timing.before_s)
        inject(mix)
        time.sleep(timing.hold_s)
        heal()
        healed_at = time.monotonic()
        time.sleep(timing.after_s)
        mix.stop()
        mix.settle(timing.settle_s)
    finally:
        mix.close()
    time.sleep(WEBHOOK_BACKOFF_S * 2)  # the last webhooks' first retries
    return tally(fault, mix.sent, rig.receiver, healed_at)


def running_on(rig: Rig, mix: Mix, srv: ServerProcess, timeout: float = 60) -> Sent:
    """Submit long jobs until one runs on ``srv`` (the job's consumer names its process)."""
    client = rig.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = mix.track(srv, long_job())
        if sent.request_id is None:
            time.sleep(0.3)
            continue
        key = f"{PREFIX}:job:{sent.request_id}"
        while time.monotonic() < deadline:
            job = client.hgetall(key)
            if job.get("status") == "IN_PROGRESS":
                if f"-{srv.process.pid}-" in job.get("consumer", ""):
                    return sent
                break
            time.sleep(0.05)
    raise AssertionError(f"no long job ran on {srv.url} within {timeout:g} s")


def with_backlog(rig: Rig, mix: Mix, waiting: int = 2) -> list[Sent]:
    """Long jobs until every replica runs one and ``waiting`` more wait: what a Redis fault
    must not lose (or, without persistence, what it loses)."""
    replicas = rig.alive()
    jobs = [mix.track(replicas[n % len(replicas)], long_job()) for n in range(len(replicas))]
    client = rig.client()

    def all_running() -> bool:
        states = [client.hget(f"{PREFIX}:job:{job.request_id}", "status") for job in jobs]
        return all(state == "IN_PROGRESS" for state in states)

    wait_for(all_running, 60, "a long job on every replica")
    jobs += [mix.track(replicas[0], long_job()) for _ in range(waiting)]
    return jobs


def start_rig(tmp: Path) -> Rig:
    """Redis (AOF), SeaweedFS, the receiver; replica A straight to Redis, replica B through the
    proxy — which refuses at first: B's start with Redis unreachable is the first fault."""
    server = RedisServer(tmp / "redis", persistent=True)
    rig = Rig(tmp, server, TcpProxy(server.port), SeaweedS3(tmp / "s3"), WebhookReceiver())
    try:
        server.start()
        rig.s3.start()
        rig.proxy.refuse()
        rig.a = launch(tmp, *rig.flags(server.url), env=S3_ENV)
        rig.b = launch(tmp, *rig.flags(rig.proxy.url), env=S3_ENV)
        wait_ready(rig.a)
    except BaseException:
        rig.close()
        raise
    return rig


def unreachable_at_start(rig: Rig) -> Row:
    b = rig.b
    assert b is not None
    row = Row("Redis unreachable at start")
    wait_for(lambda: "unreachable while starting" in b.log(), 120, "B's log line")
    time.sleep(2 * LEASE_S)  # a while later: still up, still not ready
    row.facts["alive"] = b.process.poll() is None
    row.facts["readiness"] = readiness(b)
    answer = httpx.post(f"{b.url}{SUBMIT}", json=long_job(), timeout=30)
    row.refused[f"{answer.status_code} {answer.json().get('error_type')}"] += 1
    row.facts["retry_after"] = answer.headers.get("retry-after")
    line = next(line for line in b.log().splitlines() if "unreachable while starting" in line)
    row.notes.append("log: " + line.split(" - ", 1)[-1][:160])
    rig.proxy.heal()
    healed = time.monotonic()
    wait_ready(b)
    row.recover_s = time.monotonic() - healed
    return row


def webhook_receiver_down(rig: Rig, timing: Timing) -> Row:
    before = sum(
        metric(srv, "upscaler_webhooks_total", 'outcome="given_up"') for srv in rig.alive()
    )
    row = run_fault(
        rig,
        "webhook receiver down (longer than the retry window)",
        lambda mix: setattr(rig.receiver, "down", True),
        lambda: setattr(rig.receiver, "down", False),
        timing,
    )
    given_up = sum(
        metric(srv, "upscaler_webhooks_total", 'outcome="given_up"') for srv in rig.alive()
    )
    row.facts["given_up"] = given_up - before
    # those requests' results are still there
    missed = [
        item.request_id
        for item in row.sent
        if item.kind == "queue" and item.request_id and rig.receiver.count(item.request_id) == 0
    ]
    fetchable = sum(
        httpx.get(f"{rig.a.url}{REQUESTS}/{request_id}", timeout=10).status_code == 200
        for request_id in missed
    )
    row.facts["missed"], row.facts["fetchable"] = len(missed), fetchable
    return row


def s3_down(rig: Rig, timing: Timing) -> Row:
    failures = 'store="s3"'
    before = sum(
        metric(srv, "upscaler_output_store_failures_total", failures) for srv in rig.alive()
    )
    row = run_fault(
        rig, "S3 output store down during uploads", lambda mix: rig.s3.kill(), rig.s3.start, timing
    )
    after = sum(
        metric(srv, "upscaler_output_store_failures_total", failures) for srv in rig.alive()
    )
    row.facts["store_failures_counted"] = after - before
    failed = [item.request_id for item in row.sent if item.outcome == "failed store_unavailable"]
    row.facts["their_webhooks_say_error"] = sum(
        [delivery["status"] for delivery in rig.receiver.deliveries.get(request_id, [])]
        == ["ERROR"]
        for request_id in failed
    )
    return row


def partition(rig: Rig, timing: Timing) -> Row:
    target: list[Sent] = []

    def inject(mix: Mix) -> None:
        target.append(running_on(rig, mix, rig.b))
        rig.proxy.partition()

    def heal() -> None:
        """Heal once another replica has taken the job over (its lease lapsed): on a busy
        machine that can take longer than the fault's hold, and before it B could still finish
        the job itself, legitimately, leaving nothing late to drop."""
        key = f"{PREFIX}:job:{target[0].request_id}"
        client, mine = rig.client(), f"-{rig.b.process.pid}-"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and mine in (client.hget(key, "consumer") or ""):
            time.sleep(0.1)
        rig.proxy.heal()

    row = run_fault(rig, "replica B partitioned from Redis", inject, heal, timing)
    (job,) = target
    row.facts["long_job"] = job.outcome or job.lost
    row.facts["long_job_webhooks"] = rig.receiver.count(job.request_id)
    # B learns it lost the lease at its next renewal or completion after the heal; on a busy
    # machine that can come after the rest of the row has settled, so wait for it (bounded)
    deadline = time.monotonic() + 30
    while True:
        log = rig.b.log()
        dropped = any(
            line in log
            for line in ("finished here after its lease was lost", "lease lost; stopping here")
        )
        if dropped or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    row.facts["late_result_dropped"] = dropped
    return row


def redis_killed(rig: Rig, timing: Timing, persistent: bool) -> Row:
    before = [metric(srv, "upscaler_queue_redis_data_lost_total") for srv in rig.alive()]

    def heal() -> None:
        if not persistent:  # a Redis without persistence comes back empty
            rig.redis.directory = rig.tmp / "redis-empty"
        rig.redis.start(persistent=persistent)

    backlog: list[Sent] = []

    def inject(mix: Mix) -> None:
        backlog.extend(with_backlog(rig, mix))
        rig.redis.kill()

    kept = "(AOF, fsync always)" if persistent else "(no persistence)"
    name = f"Redis SIGKILLed, restarted {kept}"
    row = run_fault(rig, name, inject, heal, timing)
    after = [metric(srv, "upscaler_queue_redis_data_lost_total") for srv in rig.alive()]
    row.facts["data_lost_seen"] = [a - b for a, b in zip(after, before, strict=True)]
    row.facts["backlog"] = [item.outcome or item.lost for item in backlog]
    return row


def replica_killed(rig: Rig, timing: Timing) -> Row:
    target: list[Sent] = []

    def inject(mix: Mix) -> None:
        target.append(running_on(rig, mix, rig.a))
        rig.a.process.kill()
        rig.a.process.wait(timeout=10)

    row = run_fault(rig, "replica A SIGKILLed mid-request", inject, lambda: None, timing)
    (job,) = target
    row.facts["long_job"] = job.outcome or job.lost
    row.facts["long_job_webhooks"] = rig.receiver.count(job.request_id)
    return row


def run_suite(
    tmp: Path, timing: Timing, report: Callable[[Row], None] = lambda row: None
) -> list[Row]:
    """Every fault in turn on one rig; ``report`` sees each row as it is done."""
    rig = start_rig(tmp)
    rows: list[Row] = []
    faults = [
        lambda: unreachable_at_start(rig),
        lambda: webhook_receiver_down(rig, timing),
        lambda: s3_down(rig, timing),
        lambda: partition(rig, timing),
        lambda: redis_killed(rig, timing, persistent=True),
        lambda: redis_killed(rig, timing, persistent=False),
        lambda: replica_killed(rig, timing),
    ]
    try:
        for fault in faults:
            started = time.monotonic()
            rows.append(fault())
            rows[-1].elapsed_s = time.monotonic() - started
            report(rows[-1])
    finally:
        rig.close()
    return rows


HEADER = (
    "| fault | accepted | completed | failed with a status | refused at submit | lost "
    "| duplicates | webhooks delivered/due | recover (s) |\n|---|---|---|---|---|---|---|---|---|"
)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {what}" for what, n in counter.most_common()) or "0"


def row_line(row: Row) -> str:
    lost = f"{row.lost}" + (f" ({_counts(row.lost_why)})" if row.lost else "")
    recover = f"{row.recover_s:.1f}" if row.recover_s is not None else "—"
    return (
        f"| {row.fault} | {row.accepted} | {row.completed} | {_counts(row.failed)} "
        f"| {_counts(row.refused)} | {lost} | {row.duplicates} "
        f"| {row.webhooks}/{row.queued_ended} | {recover} |"
    )


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what docs/replicas.md shows), then each fault's notes."""
    notes = [
        f"- {row.fault} ({row.elapsed_s:.0f} s): "
        + "; ".join([*(f"{name}={value}" for name, value in row.facts.items()), *row.notes])
        for row in rows
    ]
    lines = [HEADER, *(row_line(row) for row in rows), "", *notes]
    return "\n".join(lines) + "\n"
