"""The queue shared by every replica, on Redis: any replica accepts, answers and works it.

Layout under ``<prefix>`` (one Redis, not a cluster: scripts touch keys they compute):

* ``<prefix>:waiting`` — a list of request ids; submits push on the left, claims pop on the right
  (first in, first out; a request handed back goes to the right, so it runs next). Its length is
  what KEDA scales on.
* ``<prefix>:running`` — a sorted set: request id → lease deadline (ms, Redis's own clock).
* ``<prefix>:job:<id>`` — a hash: request, base_url, webhook_url, status, attempts, consumer,
  outcome (JSON once completed), cancel flag. ``<prefix>:logs:<id>`` — its log lines.

Every state change is one Lua script, so it is atomic: a replica claims a request and starts its
lease in one step, renews it while the job runs, and completes it only if it still holds it.
Submit and complete are idempotent, so a command retried after its answer was lost (the client
retries on timeouts) neither queues a request twice nor loses its webhook. A
replica that dies stops renewing; any replica's reaper puts its request back (or, after
``max_attempts`` runs, completes it with an error). Cancel works from any replica: a waiting
request is completed at once, a running one is flagged and its runner stops at the next step.

Redis going away is survivable: the client retries briefly with backoff and then the route answers
503 with ``Retry-After`` (:func:`~predictor.errors.store_unavailable`) instead of hanging; the
consumer and reaper back off and log the outage once and its end once; a replica that cannot reach
Redis at start is not ready (:attr:`RedisQueue.ready`) and keeps trying. A Redis that comes back
empty (restarted without persistence) is noticed by a marker key every replica checks
(``<prefix>:epoch``): each replica logs it and counts it (``upscaler_queue_redis_data_lost``);
requests running at that moment still finish and write their record again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from predictor import metrics
from predictor.errors import RequestFailed, queue_full, store_unavailable
from predictor.queue.base import (
    CANCELLED_OUTCOME,
    MAX_LOGS,
    CancelOutcome,
    LogLineObserver,
    Outcome,
    QueueBackend,
    QueueState,
    Status,
    log_line,
    outcome_log,
    run_job,
    stopped_by_shutdown,
)
from predictor.schema import UpscaleRequest
from predictor.workers import Admission

log = logging.getLogger("predictor.queue.redis")

#: how often an idle replica looks for work, and an SSE stream for changes (seconds)
POLL_S = 0.1
#: a command's budget: connect and read timeouts, then this many retries with jittered backoff,
#: so a route answers 503 within a few seconds of Redis going away (and never hangs on it)
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
COMMAND_RETRIES = 2
#: background loops (connect, consume, reap) retry Redis from 0.1 s, doubling to this cap
MAX_BACKOFF_S = 5.0
#: how long a finished request's result is retried while Redis is away; after it, the result is
#: dropped and the lapsed lease has another replica run the request again
COMPLETE_RETRY_S = 30.0

#: what the client treats as Redis being away (a restarted Redis loading its AOF raises
#: BusyLoadingError, a ConnectionError)
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def connection_options() -> dict[str, Any]:
    """Timeouts and a bounded, jittered retry for every command (see the constants above)."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": READ_TIMEOUT_S,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.1), COMMAND_RETRIES),
        "retry_on_error": list(UNREACHABLE),
        "health_check_interval": 10,
    }


class Backoff:
    """Delays for a loop that retries Redis: 0.1 s doubling to ``cap``; reset on success."""

    def __init__(self, first: float = 0.1, cap: float = MAX_BACKOFF_S) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)"

SUBMIT = """
local waiting = redis.call('LLEN', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return waiting end  -- a retry: its answer was lost
if waiting >= tonumber(ARGV[5]) then return -1 end
redis.call('HSET', KEYS[2], 'request', ARGV[2], 'base_url', ARGV[3], 'webhook_url', ARGV[4],
           'status', 'IN_QUEUE', 'attempts', 0, 'consumer', '', 'cancel', '0')
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('LPUSH', KEYS[1], ARGV[1])
return waiting
"""

CLAIM = (
    _NOW_MS
    + """
local id = redis.call('RPOP', KEYS[1])
if not id then return false end
local job = ARGV[1] .. ':job:' .. id
if redis.call('HGET', job, 'status') ~= 'IN_QUEUE' then return false end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
redis.call('HSET', job, 'status', 'IN_PROGRESS', 'consumer', ARGV[2])
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
return {id, redis.call('HGET', job, 'request'), redis.call('HGET', job, 'base_url'),
        redis.call('HGET', job, 'webhook_url'), attempts}
"""
)


def _recreate(first: int) -> str:
    """Lua: write a running request's record again if it vanished because Redis lost its data
    since the claim (the data marker ``KEYS[4]`` is not the one seen at the claim,
    ``ARGV[first]``), never when it merely expired. ``ARGV[first+1..first+5]``: base_url,
    webhook_url, request, attempts, the log line to add."""
    a = [f"ARGV[{first + n}]" for n in range(6)]
    return f"""
local recreated = false
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('GET', KEYS[4]) ~= {a[0]} then
  redis.call('HSET', KEYS[2], 'request', {a[3]}, 'base_url', {a[1]}, 'webhook_url', {a[2]},
             'status', 'IN_PROGRESS', 'attempts', {a[4]}, 'consumer', ARGV[2], 'cancel', '0')
  redis.call('RPUSH', KEYS[3], {a[5]})
  recreated = true
end
"""


RENEW = (
    _NOW_MS
    + _recreate(4)
    + """
if recreated then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  return 3
end
if redis.call('HGET', KEYS[2], 'consumer') ~= ARGV[2]
   or redis.call('HGET', KEYS[2], 'status') ~= 'IN_PROGRESS' then return -1 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
if redis.call('HGET', KEYS[2], 'cancel') == '1' then return 2 end
return 1
"""
)

COMPLETE = (
    _recreate(6)
    + """
if redis.call('HGET', KEYS[2], 'consumer') == ARGV[2]
   and redis.call('HGET', KEYS[2], 'status') == 'COMPLETED' then return 1 end  -- a retry
if redis.call('HGET', KEYS[2], 'consumer') ~= ARGV[2]
   or redis.call('HGET', KEYS[2], 'status') ~= 'IN_PROGRESS' then return 0 end
redis.call('HSET', KEYS[2], 'status', 'COMPLETED', 'outcome', ARGV[3])
redis.call('HDEL', KEYS[2], 'request')  -- the input: a finished request keeps its output only
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""
)

RELEASE = """
if redis.call('HGET', KEYS[2], 'consumer') ~= ARGV[2]
   or redis.call('HGET', KEYS[2], 'status') ~= 'IN_PROGRESS' then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'IN_QUEUE', 'consumer', '')
redis.call('HINCRBY', KEYS[2], 'attempts', -1)
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
"""

CANCEL = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 'NOT_FOUND' end
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'COMPLETED' then return 'ALREADY_COMPLETED' end
if status == 'IN_QUEUE' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('HSET', KEYS[2], 'status', 'COMPLETED', 'outcome', ARGV[2])
  redis.call('HDEL', KEYS[2], 'request')
  redis.call('RPUSH', KEYS[3], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  return 'CANCELLED_WAITING'
end
if redis.call('HGET', KEYS[2], 'cancel') ~= '1' then
  redis.call('HSET', KEYS[2], 'cancel', '1')
  redis.call('RPUSH', KEYS[3], ARGV[3])
end
return 'CANCELLATION_REQUESTED'
"""

#: the marker of this Redis's data: set once, read back by every replica; a new value means the
#: data went away (a restart without persistence, a flush)
EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
return epoch
"""

REAP = (
    _NOW_MS
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local ended = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[1] .. ':job:' .. id
  local logs = ARGV[1] .. ':logs:' .. id
  if redis.call('HGET', job, 'status') == 'IN_PROGRESS' then
    local give_up = tonumber(redis.call('HGET', job, 'attempts')) >= tonumber(ARGV[2])
    if redis.call('HGET', job, 'cancel') == '1' or give_up then
      local outcome = ARGV[3]
      if redis.call('HGET', job, 'cancel') == '1' then outcome = ARGV[4] end
      redis.call('HSET', job, 'status', 'COMPLETED', 'outcome', outcome, 'consumer', '')
      redis.call('HDEL', job, 'request')
      redis.call('RPUSH', logs, ARGV[6])
      redis.call('EXPIRE', job, ARGV[7])
      redis.call('EXPIRE', logs, ARGV[7])
      table.insert(ended, id)
    else
      redis.call('HSET', job, 'status', 'IN_QUEUE', 'consumer', '')
      redis.call('RPUSH', logs, ARGV[5])
      redis.call('RPUSH', KEYS[2], id)
    end
  end
end
return ended
"""
)


def _dump(outcome: Outcome) -> str:
    return json.dumps(
        {
            "body": outcome.body,
            "error_status": outcome.error_status,
            "error_headers": outcome.error_headers,
            "inference_time": outcome.inference_time,
        }
    )


def _load(text: str) -> Outcome:
    data = json.loads(text)
    return Outcome(
        data["body"], data["error_status"], data["error_headers"], data["inference_time"]
    )


def runner_lost(attempts: int) -> RequestFailed:
    return RequestFailed(
        500,
        "runner_disconnected",
        f"The request was started {attempts} times on replicas that stopped before finishing "
        "it; it was not retried again.",
    )


@dataclass
class _Claimed:
    request_id: str
    request: UpscaleRequest
    base_url: str
    webhook_url: str | None
    attempts: int
    #: the data marker when it was claimed: a different one later means Redis lost its data
    epoch: str | None = None


class Reachability:
    """Whether Redis answers, as the background loops see it: the start and the end of an outage
    are logged once each (not once per retry) and exported as ``upscaler_queue_redis_up``."""

    def __init__(self, where: str, prefix: str) -> None:
        self.where = where
        self.up = False
        self.down_since: float | None = None
        self.backoff = Backoff()
        self.gauge = metrics.REDIS_UP.labels(prefix)
        self.gauge.set(0)

    def failed(self, exc: Exception, doing: str) -> float:
        """Note a failure; return how long to wait before retrying."""
        delay = self.backoff.next()
        if self.up or self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "redis at %s unreachable while %s (%s: %s); queue submits answer 503 with "
                "Retry-After, retrying with backoff up to %.0f s",
                self.where,
                doing,
                type(exc).__name__,
                exc,
                MAX_BACKOFF_S,
            )
        self.up = False
        self.gauge.set(0)
        return delay

    def succeeded(self) -> None:
        self.backoff.reset()
        if not self.up and self.down_since is not None:
            log.warning(
                "redis at %s reachable again after %.1f s",
                self.where,
                time.monotonic() - self.down_since,
            )
        self.up = True
        self.down_since = None
        self.gauge.set(1)


class _RedisObserver(LogLineObserver):
    """Log lines from the worker thread, appended in order by one task on the event loop."""

    def __init__(self, queue: RedisQueue, request_id: str, loop: asyncio.AbstractEventLoop):
        self.queue = queue
        self.request_id = request_id
        self.loop = loop
        self.lines: asyncio.Queue[dict[str, str] | None] = asyncio.Queue()
        self.sent = 0

    def add(self, line: dict[str, str]) -> None:
        self.loop.call_soon_threadsafe(self.lines.put_nowait, line)

    async def pump(self) -> None:
        while (line := await self.lines.get()) is not None:
            if self.sent < MAX_LOGS:
                self.sent += 1
                with contextlib.suppress(*UNREACHABLE):  # a log line is not worth waiting for
                    await self.queue.redis.rpush(
                        self.queue.key("logs", self.request_id), json.dumps(line)
                    )

    async def close(self) -> None:
        self.lines.put_nowait(None)


class RedisQueue(QueueBackend):
    def __init__(
        self,
        *args: Any,
        redis_url: str,
        prefix: str,
        max_queued: int = 1000,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, **connection_options())
        self.prefix = prefix
        self.max_queued = max_queued
        self.lease_ms = int(lease_s * 1000)
        self.max_attempts = max_attempts
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.waiting_key = f"{prefix}:waiting"
        self.running_key = f"{prefix}:running"
        self._scripts = {
            name: self.redis.register_script(source)
            for name, source in (
                ("submit", SUBMIT),
                ("claim", CLAIM),
                ("renew", RENEW),
                ("complete", COMPLETE),
                ("release", RELEASE),
                ("cancel", CANCEL),
                ("reap", REAP),
                ("epoch", EPOCH),
            )
        }
        where = self.redis.connection_pool.connection_kwargs
        self.reach = Reachability(f"{where.get('host')}:{where.get('port')}", prefix)
        #: the data marker this replica last saw (None until it first reached Redis)
        self.epoch: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._stopping = False

    @property
    def ready(self) -> bool:
        """Ready once Redis answered at least once; a later outage keeps the replica ready
        (sync requests need no Redis; queue routes answer 503 with Retry-After meanwhile)."""
        return self.epoch is not None

    def key(self, kind: str, request_id: str) -> str:
        return f"{self.prefix}:{kind}:{request_id}"

    @property
    def ttl_s(self) -> int:
        return max(1, round(self.result_ttl_s))

    @contextlib.contextmanager
    def _reachable(self):
        """Redis away (after the client's own retries) is a 503 with Retry-After."""
        try:
            yield
        except UNREACHABLE as exc:
            self.reach.failed(exc, "answering a request")  # logged once per outage
            raise store_unavailable("shared queue (Redis)", exc) from None

    async def _enqueue(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        with self._reachable():
            ahead = await self._scripts["submit"](
                keys=[self.waiting_key, self.key("job", request_id), self.key("logs", request_id)],
                args=[
                    request_id,
                    # only the fields the client set: the running replica applies the defaults
                    request.model_dump_json(exclude_unset=True),
                    base_url,
                    webhook_url or "",
                    self.max_queued,
                    json.dumps(log_line("queued")),
                ],
            )
        if ahead < 0:
            pool = self.upscaler.pool
            raise queue_full(pool.mean_job_s * self.max_queued / pool.max_inflight)
        logs = [log_line("queued")]
        return QueueState(request_id, Status.IN_QUEUE, base_url, int(ahead), logs)

    async def state(self, request_id: str) -> QueueState | None:
        with self._reachable():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.key("job", request_id))
                pipe.lrange(self.key("logs", request_id), 0, -1)
                pipe.llen(self.waiting_key)
                pipe.lpos(self.waiting_key, request_id)
                job, logs, waiting, index = await pipe.execute()
        if not job:
            return None
        status = Status(job["status"])
        position = waiting - 1 - index if status is Status.IN_QUEUE and index is not None else None
        outcome = _load(job["outcome"]) if job.get("outcome") else None
        lines = [json.loads(line) for line in logs]
        return QueueState(request_id, status, job["base_url"], position, lines, outcome)

    async def cancel(self, request_id: str) -> CancelOutcome:
        with self._reachable():
            answer = await self._scripts["cancel"](
                keys=[self.waiting_key, self.key("job", request_id), self.key("logs", request_id)],
                args=[
                    request_id,
                    _dump(CANCELLED_OUTCOME),
                    json.dumps(log_line("cancellation requested", "WARNING")),
                    json.dumps(outcome_log(CANCELLED_OUTCOME)),
                    self.ttl_s,
                ],
            )
            if answer == "CANCELLED_WAITING":  # it never ran: this replica answers for it
                self._count_unrun(request_id, CANCELLED_OUTCOME)
                webhook = await self.redis.hget(self.key("job", request_id), "webhook_url")
                self._finished(request_id, webhook or None, CANCELLED_OUTCOME)
                return CancelOutcome.CANCELLATION_REQUESTED
        return CancelOutcome(answer)

    async def wait_changed(self, request_id: str, marker: Any, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, POLL_S * 2))
        return True

    async def start(self) -> None:
        """Connect in the background: an unreachable Redis leaves the replica running but not
        ready (its readiness probe fails, the reason is logged), until Redis answers."""
        self._tasks = [asyncio.create_task(self._connect_then_work())]

    async def _connect_then_work(self) -> None:
        while not self._stopping:
            try:
                await self._check_epoch()
                break
            except UNREACHABLE as exc:
                delay = self.reach.failed(
                    exc, "starting: the replica is not ready until it answers"
                )
                await asyncio.sleep(delay)
        if self._stopping:  # stopped before Redis ever answered
            return
        self.reach.succeeded()
        log.info(
            "shared queue on redis %s prefix=%s consumer=%s lease_s=%.0f",
            self.reach.where,
            self.prefix,
            self.consumer,
            self.lease_ms / 1000,
        )
        self._tasks += [asyncio.create_task(self._consume()), asyncio.create_task(self._reap())]

    async def _check_epoch(self) -> None:
        """Read (or set) the data marker; a different one than last time means Redis lost its
        data: log it and count it, so the loss is seen, not silent."""
        epoch = await self._scripts["epoch"](keys=[f"{self.prefix}:epoch"], args=[uuid.uuid4().hex])
        if self.epoch is not None and epoch != self.epoch:
            metrics.REDIS_DATA_LOST.inc()
            log.error(
                "redis at %s lost its data (restarted without persistence, or flushed): requests "
                "waiting in the queue and finished results are gone (their status answers 404, "
                "no webhook comes); requests running now are recorded again and finish. Run Redis "
                "with appendonly yes (docs/replicas.md)",
                self.reach.where,
            )
        self.epoch = epoch

    async def stop(self) -> None:
        """Stop claiming; hand the requests running here back to the queue, for other replicas."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for request_id in list(self._running):
            try:
                await self._hand_back(request_id)
            except UNREACHABLE as exc:  # its lease lapses instead, and another replica reruns it
                log.warning(
                    "request_id=%s not handed back: redis unreachable (%s)", request_id, exc
                )
        for task in self._running.values():
            task.cancel()

    async def _hand_back(self, request_id: str) -> None:
        """Put a request this replica runs back at the head of the queue, for another one."""
        handed_back = await self._scripts["release"](
            keys=[
                self.running_key,
                self.key("job", request_id),
                self.waiting_key,
                self.key("logs", request_id),
            ],
            args=[
                request_id,
                self.consumer,
                json.dumps(log_line("handed back: the replica running it is stopping")),
            ],
        )
        log.info("request_id=%s handed back to the queue=%s", request_id, bool(handed_back))

    async def _consume(self) -> None:
        """Claim a request whenever an engine worker here is idle (sync traffic shares them)."""
        pool = self.upscaler.pool
        while not self._stopping and not pool.closing:  # a replica shutting down claims nothing
            if pool.idle_slots() <= 0:
                await asyncio.sleep(POLL_S)
                continue
            admission = pool.admit()
            try:
                claimed = await self._claim()
            except UNREACHABLE as exc:
                admission.release()
                await asyncio.sleep(self.reach.failed(exc, "claiming work"))
                continue
            except Exception:
                admission.release()
                log.exception("claiming from redis failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self.reach.succeeded()
            if claimed is None:
                admission.release()
                await asyncio.sleep(POLL_S)
                continue
            task = asyncio.get_running_loop().create_task(
                self._run(claimed, admission), context=contextvars.Context()
            )
            self._running[claimed.request_id] = task
            task.add_done_callback(lambda _, rid=claimed.request_id: self._running.pop(rid, None))

    async def _claim(self) -> _Claimed | None:
        found = await self._scripts["claim"](
            keys=[self.waiting_key, self.running_key],
            args=[self.prefix, self.consumer, self.lease_ms],
        )
        if not found:
            return None
        request_id, request, base_url, webhook_url, attempts = found
        return _Claimed(
            request_id,
            UpscaleRequest.model_validate_json(request),
            base_url,
            webhook_url or None,
            int(attempts),
            self.epoch,
        )

    async def _run(self, job: _Claimed, admission: Admission) -> None:
        loop = asyncio.get_running_loop()
        observer = _RedisObserver(self, job.request_id, loop)
        pump = asyncio.create_task(observer.pump())
        if job.attempts > 1:
            observer.log(f"attempt {job.attempts} of {self.max_attempts}")
        runner = asyncio.current_task()
        assert runner is not None
        verdict: dict[str, str] = {}
        renewer = asyncio.create_task(self._renew(job, runner, verdict))
        try:
            outcome = await run_job(
                self.upscaler, job.request_id, job.request, job.base_url, observer, admission
            )
        except asyncio.CancelledError:
            if verdict.get("why") != "cancel":  # lease lost, or this replica is stopping
                return
            outcome = CANCELLED_OUTCOME
        finally:
            renewer.cancel()
            await observer.close()
            with contextlib.suppress(Exception):
                await pump
        if stopped_by_shutdown(outcome):  # unfinished here: another replica runs it
            with contextlib.suppress(*UNREACHABLE):  # else its lease lapses: the same, later
                await self._hand_back(job.request_id)
            return
        if await self._complete(job, outcome):
            self._finished(job.request_id, job.webhook_url, outcome)

    def _job_keys(self, request_id: str) -> list[str]:
        """What RENEW and COMPLETE touch: running, the record, its logs, the data marker."""
        return [
            self.running_key,
            self.key("job", request_id),
            self.key("logs", request_id),
            f"{self.prefix}:epoch",
        ]

    @staticmethod
    def _recreate_args(job: _Claimed) -> list[Any]:
        """The record's fields, written again if Redis lost it while the request ran here."""
        return [
            job.epoch or "",
            job.base_url,
            job.webhook_url or "",
            job.request.model_dump_json(exclude_unset=True),
            job.attempts,
            json.dumps(log_line("recorded again: redis lost it while it ran", "WARNING")),
        ]

    async def _complete(self, job: _Claimed, outcome: Outcome) -> bool:
        """Record the outcome if this replica still holds the request; retried while Redis is
        away (up to :data:`COMPLETE_RETRY_S`). True when recorded: its webhook is this
        replica's to send."""
        backoff = Backoff()
        deadline = time.monotonic() + COMPLETE_RETRY_S
        while True:
            try:
                applied = await self._scripts["complete"](
                    keys=self._job_keys(job.request_id),
                    args=[
                        job.request_id,
                        self.consumer,
                        _dump(outcome),
                        json.dumps(outcome_log(outcome)),
                        self.ttl_s,
                        *self._recreate_args(job),
                    ],
                )
                break
            except UNREACHABLE as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "request_id=%s: result dropped, redis unreachable for %.0f s (%s); its "
                        "lease lapses and another replica runs it again",
                        job.request_id,
                        COMPLETE_RETRY_S,
                        exc,
                    )
                    return False
                await asyncio.sleep(backoff.next())
        if not applied:
            log.warning("request_id=%s finished here after its lease was lost", job.request_id)
        return bool(applied)

    async def _renew(self, job: _Claimed, runner: asyncio.Task, verdict: dict) -> None:
        """Keep the lease; stop the runner when the request is cancelled or the lease lost.

        A record that vanished because Redis lost its data is no other replica's: it is written
        again, and the run goes on (its status answered 404 meanwhile, at most a renewal interval
        once Redis is back); one that finished while Redis was away is written by
        :meth:`_complete` the same way."""
        interval = min(1.0, self.lease_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                answer = await self._scripts["renew"](
                    keys=self._job_keys(job.request_id),
                    args=[
                        job.request_id,
                        self.consumer,
                        self.lease_ms,
                        *self._recreate_args(job),
                    ],
                )
            except UNREACHABLE as exc:  # the lease may lapse: then another replica reruns it
                self.reach.failed(exc, "renewing leases")  # logged once per outage
                continue
            if answer == 3:
                log.error(
                    "request_id=%s: its record vanished from redis (data lost); recorded again",
                    job.request_id,
                )
            if answer in (1, 3):
                continue
            verdict["why"] = "cancel" if answer == 2 else "lost"
            if answer != 2:
                log.warning("request_id=%s: lease lost; stopping here", job.request_id)
            runner.cancel()
            return

    async def _reap(self) -> None:
        """Put requests of replicas that stopped renewing back in the queue (or fail them), and
        check that Redis still holds its data."""
        interval = max(0.2, self.lease_ms / 3000)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self._check_epoch()
                await self._reap_once()
            except (RequestFailed, *UNREACHABLE) as exc:  # RequestFailed: state()'s 503
                await asyncio.sleep(self.reach.failed(exc, "reaping lapsed leases"))
                continue
            except Exception:
                log.exception("reaping expired leases failed; retrying")
                continue
            self.reach.succeeded()

    async def _reap_once(self) -> None:
        lost = Outcome.from_error(runner_lost(self.max_attempts))
        ended = await self._scripts["reap"](
            keys=[self.running_key, self.waiting_key],
            args=[
                self.prefix,
                self.max_attempts,
                _dump(lost),
                _dump(CANCELLED_OUTCOME),
                json.dumps(log_line("requeued: the replica running it stopped", "WARNING")),
                json.dumps(log_line("failed: its replicas stopped", "ERROR")),
                self.ttl_s,
            ],
        )
        for request_id in ended:
            state = await self.state(request_id)
            if state is None or state.outcome is None:
                continue
            self._count_unrun(request_id, state.outcome)
            webhook = await self.redis.hget(self.key("job", request_id), "webhook_url")
            self._finished(request_id, webhook or None, state.outcome)
