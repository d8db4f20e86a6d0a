"""The SimPy model of one deployment: replicas that start, serve and stop, the queues requests
wait in, and the autoscaler's loop.

* **Routing.** With KEDA (RawDeployment + ``spec.queue``) every request waits in one shared FIFO
  queue (Redis) and the first free engine slot on any ready replica takes it; at most
  ``maxQueued`` wait, the rest are refused (429). Otherwise (Knative, or KServe's HPA) each
  request goes to a random ready replica — Knative's activator and kube-proxy both pick at random
  when ``containerConcurrency`` is unset, as the operator leaves it — and waits in that replica's
  own queue (``max_waiting``, else 429). With no ready replica, Knative's activator buffers the
  request and wakes the revision.
* **Replicas.** A new replica serves after its start-up: cold on a node that never ran one,
  cached on a node that did (nodes are kept). Removing one takes a starting replica first, then
  an idle one, else the least busy, which stops taking work and finishes what it holds.
  A replica is paid for from its creation until it is gone.
* **Claims.** A replica working the shared queue looks for work every ``claim_poll_s`` (the
  predictor's Redis consumer polls every 0.1 s): a free slot takes the next request after a
  delay drawn uniformly from [0, poll), during which the slot is held and the request waits.
* **Time.** A request's latency is its wait, its engine time, and ``overhead_s`` (HTTP, the
  client's status polls, the download) that holds no engine slot.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from loadtest.capacity import autoscalers
from loadtest.capacity.deployment import HPA, KEDA, KNATIVE, Deployment
from loadtest.capacity.service import ServiceModel
from loadtest.capacity.traffic import Arrivals, ClosedLoop, Traffic

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"
#: seconds between a replica's looks at the shared queue: the predictor's Redis consumer's
#: ``POLL_S`` (predictor/queue/redis.py; a test checks they agree). Not imported: that module
#: would bring redis and the server's stack into the planner's dependencies
CLAIM_POLL_S = 0.1
#: seconds a closed-loop user waits after a refusal (the load test's --shed-backoff)
SHED_BACKOFF_S = 0.2


@dataclass(frozen=True)
class SimSettings:
    deployment: Deployment
    service: ServiceModel
    traffic: Traffic
    #: ``fixed`` engine times, ``exponential`` around them (the M/M/c checks), or ``lognormal``:
    #: each time × a lognormal factor of mean 1 and log-spread ``service_sigma`` (jitter)
    service_distribution: str = "fixed"
    service_sigma: float = 0.0
    overhead_s: float = 0.0
    #: seconds between a replica's looks at the shared queue (the predictor's Redis consumer)
    claim_poll_s: float = CLAIM_POLL_S
    seed: int = 0
    #: seconds between samples of the replica timeline
    sample_s: float = 60.0
    #: replicas serving at t=0, on cached nodes (None: minReplicas); kept within min–max
    initial_replicas: int | None = None
    #: Knative's stable window, KEDA's polling interval: the autoscalers' knobs the spec lacks
    kpa_stable_window_s: float = 60.0
    keda_polling_s: float = 30.0


@dataclass
class Outcome:
    """What the run recorded: one row per request, the replica timeline, the replica-seconds."""

    arrival: np.ndarray
    start: np.ndarray  # engine start (nan: refused or never served)
    end: np.ndarray  # answer (nan: refused or never served)
    service_s: np.ndarray
    pixels: np.ndarray
    refused: np.ndarray
    cold: np.ndarray
    overhead_s: float
    #: (t, replicas incl. starting, ready, waiting, running)
    timeline: np.ndarray
    replica_seconds: float
    elapsed_s: float
    duration_s: float
    starts_cold: int
    starts_cached: int
    settings: SimSettings = field(repr=False)


class _Replica:
    __slots__ = ("busy", "created", "index", "node", "queue", "state")

    def __init__(self, index: int, node: int, created: float) -> None:
        self.index, self.node, self.created = index, node, created
        self.state = STARTING
        self.busy = 0
        self.queue: deque[int] = deque()


def build_autoscaler(settings: SimSettings) -> autoscalers.Autoscaler:
    d = settings.deployment
    if d.autoscaler == KNATIVE:
        return autoscalers.Kpa(
            autoscalers.KpaSettings(
                min_replicas=d.min_replicas,
                max_replicas=d.max_replicas,
                target=d.target_concurrency,
                stable_window_s=settings.kpa_stable_window_s,
                retention_s=d.scale_to_zero_grace_s or 0.0,
            )
        )
    if d.autoscaler == KEDA:
        cooldown = d.scale_to_zero_grace_s
        return autoscalers.Keda(
            autoscalers.KedaSettings(
                min_replicas=d.min_replicas,
                max_replicas=d.max_replicas,
                target=d.target_queue_length,
                polling_s=settings.keda_polling_s,
                cooldown_s=300.0 if cooldown is None else cooldown,
            )
        )
    if d.autoscaler == HPA:
        return autoscalers.CpuHpa(
            autoscalers.CpuHpaSettings(
                hpa=autoscalers.HpaSettings(
                    min_replicas=max(1, d.min_replicas), max_replicas=d.max_replicas
                ),
                target_utilization_pct=d.target_cpu_utilization,
            )
        )
    raise ValueError(f"unknown autoscaler {d.autoscaler!r}")


class Simulation:
    def __init__(self, settings: SimSettings) -> None:
        self.s = settings
        self.d = settings.deployment
        self.env = simpy.Environment()
        self.rng = random.Random(settings.seed)
        self.np_rng = np.random.default_rng(settings.seed + 1)
        self.scaler = build_autoscaler(settings)
        self.replicas: list[_Replica] = []
        #: ready replicas (routing picks among them), and one entry per free engine slot of a
        #: ready replica (the shared queue takes the first; stale entries are skipped)
        self.ready: list[_Replica] = []
        self.free_slots: deque[_Replica] = deque()
        self.draining: list[_Replica] = []
        self.free_nodes: list[int] = []
        self.nodes = 0
        self.waiting: deque[int] = deque()  # the shared queue, or the activator's buffer
        self.running = 0
        self.waiting_count = 0
        self.concurrency = 0
        self.conc_area = 0.0
        self.busy_area = 0.0
        self.last_change = 0.0
        self.replica_seconds = 0.0
        self.starts_cold = self.starts_cached = 0
        self.timeline: list[tuple[float, int, int, int, int]] = []
        self.next_index = 0
        # per-request rows (grown as requests arrive)
        self.arrival: list[float] = []
        self.start: list[float] = []
        self.end: list[float] = []
        self.service: list[float] = []
        self.pixels: list[int] = []
        self.refused: list[bool] = []
        self.cold: list[bool] = []
        self.done_events: dict[int, simpy.Event] = {}
        self.outstanding = 0
        #: every request has arrived; then ``drained`` fires when the last one is answered
        self.all_in = False
        self.drained = self.env.event()

    # -- bookkeeping ------------------------------------------------------------------------

    def _levels(self, concurrency: int = 0, busy: int = 0, waiting: int = 0) -> None:
        now = self.env.now
        span = now - self.last_change
        if span:
            self.conc_area += self.concurrency * span
            self.busy_area += self.running * span
            self.last_change = now
        self.concurrency += concurrency
        self.running += busy
        self.waiting_count += waiting

    # -- replicas ---------------------------------------------------------------------------

    def _add_replica(self, warm: bool = False) -> None:
        if self.free_nodes:
            node, cached = self.free_nodes.pop(), True
        else:
            node, cached = self.nodes, False
            self.nodes += 1
        replica = _Replica(self.next_index, node, self.env.now)
        self.next_index += 1
        self.replicas.append(replica)
        if warm:
            self._on_ready(replica)
            return
        startup = self.s.service.startup
        if cached:
            self.starts_cached += 1
        else:
            self.starts_cold += 1
        delay = startup.cached_s if cached else startup.cold_s
        self.env.timeout(delay).callbacks.append(lambda _e, r=replica: self._on_ready(r))

    def _on_ready(self, replica: _Replica) -> None:
        if replica.state != STARTING:
            return
        replica.state = READY
        self.ready.append(replica)
        self.free_slots.extend([replica] * self.d.slots)
        if self.d.shared_queue:
            self._dispatch_shared()
        else:
            buffered, self.waiting = self.waiting, deque()
            for request in buffered:
                self._waiting_level(-1)
                self._route(request)

    def _waiting_level(self, delta: int) -> None:
        self._levels(waiting=delta)

    def _retire(self, replica: _Replica) -> None:
        replica.state = GONE
        self.replica_seconds += self.env.now - replica.created
        self.free_nodes.append(replica.node)
        if replica in self.draining:
            self.draining.remove(replica)

    def _scale_to(self, want: int) -> None:
        current = len(self.replicas)
        for _ in range(want - current):
            self._add_replica()
        if want >= current:
            return
        for _ in range(current - want):
            victim = min(
                self.replicas,
                key=lambda r: (r.state != STARTING, r.busy + len(r.queue), -r.index),
            )
            self.replicas.remove(victim)
            if victim.state == READY:
                self.ready.remove(victim)
            if victim.busy or victim.queue:
                victim.state = DRAINING
                self.draining.append(victim)
            else:
                self._retire(victim)

    # -- requests ---------------------------------------------------------------------------

    def _new_request(self, pixels: int, steps: int | None, loras: int) -> int:
        request = len(self.arrival)
        seconds = self.s.service.seconds(int(pixels), steps, loras)
        if self.s.service_distribution == "exponential":
            seconds = self.np_rng.exponential(seconds)
        elif self.s.service_distribution == "lognormal":
            sigma = self.s.service_sigma
            seconds *= math.exp(sigma * self.np_rng.standard_normal() - sigma * sigma / 2)
        self.arrival.append(self.env.now)
        self.start.append(np.nan)
        self.end.append(np.nan)
        self.service.append(seconds)
        self.pixels.append(int(pixels))
        self.refused.append(False)
        self.cold.append(not self.ready)
        return request

    def _arrive(self, pixels: int, steps: int | None = None, loras: int = 0) -> int:
        request = self._new_request(pixels, steps, loras)
        self.outstanding += 1
        if self.d.shared_queue:
            if len(self.waiting) >= self.d.max_queued:
                self._refuse(request)
                return request
            self._levels(concurrency=1, waiting=1)
            self.waiting.append(request)
            self._dispatch_shared()  # with no replica, KEDA notices at its next poll
        else:
            self._levels(concurrency=1)
            if self.ready:
                self._route(request)
            else:  # the activator buffers it and pokes the autoscaler
                self._waiting_level(1)
                self.waiting.append(request)
                if not self.replicas:
                    self._tick()
        return request

    def _refuse(self, request: int) -> None:
        self.refused[request] = True
        self.outstanding -= 1
        self._finished(request)

    def _route(self, request: int) -> None:
        replica = self.rng.choice(self.ready)
        if replica.busy < self.d.slots:
            self._run(replica, request)
        elif len(replica.queue) < self.d.max_waiting:
            replica.queue.append(request)
            self._waiting_level(1)
        else:
            self._levels(concurrency=-1)
            self._refuse(request)

    def _run(self, replica: _Replica, request: int) -> None:
        replica.busy += 1
        self._levels(busy=1)
        self.start[request] = self.env.now
        done = self.env.timeout(self.service[request])
        done.callbacks.append(lambda _e: self._complete(replica, request))

    def _complete(self, replica: _Replica, request: int) -> None:
        replica.busy -= 1
        self._levels(concurrency=-1, busy=-1)
        self.end[request] = self.env.now
        self.outstanding -= 1
        self._finished(request)
        if self.d.shared_queue:
            if replica.state == READY:
                self.free_slots.append(replica)
            elif replica.state == DRAINING and not replica.busy:
                self._retire(replica)
            self._dispatch_shared()
        elif replica.queue:
            self._waiting_level(-1)
            self._run(replica, replica.queue.popleft())
        elif replica.state == DRAINING and not replica.busy:
            self._retire(replica)

    def _dispatch_shared(self) -> None:
        while self.waiting and self.free_slots:
            replica = self.free_slots.popleft()
            if replica.state != READY or replica.busy >= self.d.slots:
                continue  # stale: the replica was removed since
            self._waiting_level(-1)
            request = self.waiting.popleft()
            if self.s.claim_poll_s:
                replica.busy += 1  # the slot is taken while its consumer wakes up
                delay = self.rng.uniform(0.0, self.s.claim_poll_s)
                self.env.timeout(delay).callbacks.append(
                    lambda _e, r=replica, q=request: self._claimed(r, q)
                )
            else:
                self._run(replica, request)

    def _claimed(self, replica: _Replica, request: int) -> None:
        replica.busy -= 1
        self._run(replica, request)

    def _finished(self, request: int) -> None:
        event = self.done_events.pop(request, None)
        if event is not None:
            event.succeed()
        if self.outstanding == 0 and self.all_in and not self.drained.triggered:
            self.drained.succeed()

    # -- processes --------------------------------------------------------------------------

    def _observation(self) -> autoscalers.Observation:
        self._levels()
        return autoscalers.Observation(
            now=self.env.now,
            ready=len(self.ready),
            replicas=len(self.replicas),
            concurrency_area=self.conc_area,
            busy_area=self.busy_area,
            running=self.running,
            waiting=self.waiting_count,
            concurrency=self.concurrency,
            slots=self.d.slots,
        )

    def _tick(self) -> None:
        self._scale_to(self.scaler.decide(self._observation()))

    def _autoscale(self):
        while True:
            self._tick()
            yield self.env.timeout(self.scaler.tick_s)

    def _sample(self):
        while True:
            self.timeline.append(
                (
                    self.env.now,
                    len(self.replicas),
                    len(self.ready),
                    self.waiting_count,
                    self.running,
                )
            )
            yield self.env.timeout(self.s.sample_s)

    def _open(self, arrivals: Arrivals):
        steps, loras = arrivals.steps, arrivals.loras
        for index, at in enumerate(arrivals.times.tolist()):
            delay = at - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self._arrive(
                arrivals.pixels[index],
                None if steps is None else int(steps[index]),
                0 if loras is None else int(loras[index]),
            )

    def _user(self, loop: ClosedLoop, rng: np.random.Generator):
        while self.env.now < loop.duration_s:
            (pixels,) = loop.sizes.draw(rng, 1)
            event = self.env.event()
            request = len(self.arrival)
            self.done_events[request] = event
            self._arrive(int(pixels))
            if not event.triggered:
                yield event
            if self.refused[request]:
                yield self.env.timeout(SHED_BACKOFF_S)
                continue
            pause = self.s.overhead_s + loop.think_s
            if pause:
                yield self.env.timeout(pause)

    def run(self) -> Outcome:
        traffic = self.s.traffic
        initial = self.d.min_replicas
        if self.s.initial_replicas is not None:  # already serving: clamp to the bounds
            initial = min(max(self.s.initial_replicas, initial), self.d.max_replicas)
        if self.d.autoscaler == HPA:
            initial = max(1, initial)
        for _ in range(initial):
            self._add_replica(warm=True)
        duration = traffic.duration_s
        if isinstance(traffic, ClosedLoop):
            rng = np.random.default_rng(self.s.seed)
            arrived = self.env.timeout(duration)
            for _ in range(traffic.users):
                self.env.process(self._user(traffic, rng))
        else:
            arrived = self.env.process(self._open(traffic))
        # after the traffic, so that the autoscaler's first look (t=0) sees the first arrivals
        self.env.process(self._autoscale())
        self.env.process(self._sample())
        self.env.run(until=arrived)
        if self.env.now < duration:
            self.env.run(until=duration)
        self.all_in = True
        # let the work in hand finish (bounded: a deployment that never catches up stops here)
        if self.outstanding:
            limit = self.env.timeout(max(3600.0, duration))
            self.env.run(until=self.drained | limit)
        elapsed = self.env.now
        for replica in self.replicas + self.draining:
            self.replica_seconds += elapsed - replica.created
        return Outcome(
            arrival=np.asarray(self.arrival),
            start=np.asarray(self.start),
            end=np.asarray(self.end),
            service_s=np.asarray(self.service),
            pixels=np.asarray(self.pixels, dtype=np.int64),
            refused=np.asarray(self.refused, dtype=bool),
            cold=np.asarray(self.cold, dtype=bool),
            overhead_s=self.s.overhead_s,
            timeline=np.asarray(self.timeline, dtype=float).reshape(-1, 5),
            replica_seconds=self.replica_seconds,
            elapsed_s=elapsed,
            duration_s=duration,
            starts_cold=self.starts_cold,
            starts_cached=self.starts_cached,
            settings=self.s,
        )


def simulate(settings: SimSettings) -> Outcome:
    """Run one simulation to the end of its traffic (and the work still in hand)."""
    return Simulation(settings).run()
