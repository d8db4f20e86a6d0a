"""The autoscalers the operator configures, as pure state machines with their documented defaults.

Each is called every ``tick_s`` seconds of simulated time with an :class:`Observation` and answers
the replica count it wants (the Deployment's ``replicas``). Nothing here knows SimPy: the rules
are unit-tested on hand-worked traces (tests/loadtest/test_capacity_autoscalers.py).

Sources (the upstream documentation each rule follows):

* Knative KPA — windows, panic mode, rates: https://knative.dev/docs/serving/autoscaling/kpa-specific/
  (stable window 60 s; panic window 10 % of it; panic when the panic-window concurrency reaches
  200 % of what the ready pods target; no scale-down while panicking; panic ends after a stable
  window without cause; max scale-up rate 1000, max scale-down rate 2; the last replica goes only
  after a whole stable window without traffic).
* Knative target and utilization: https://knative.dev/docs/serving/autoscaling/concurrency/ (the
  soft target, ``autoscaling.knative.dev/target`` = KServe's ``scaleTarget``; target utilization
  70 % by default, so a target of 1 scales at 0.7 in flight per pod).
* Knative scale to zero: https://knative.dev/docs/serving/autoscaling/scale-to-zero/ (the grace
  period, 30 s, bounds how long the last pod waits for the activator to be in the path; the
  pod-retention period, 0 s by default and ``spec.scaling.scaleToZeroGracePeriod`` here, is the
  least time the last pod stays after the decision to scale to zero).
* Knative activator: https://knative.dev/docs/serving/load-balancing/target-burst-capacity/ (it
  buffers requests for a revision at zero and wakes it) and
  https://knative.dev/docs/serving/load-balancing/ (without ``containerConcurrency`` it sends each
  request to a random pod).
* KEDA: https://keda.sh/docs/latest/reference/scaledobject-spec/ (``pollingInterval`` 30 s: how
  often triggers are checked to activate 0 → 1; ``cooldownPeriod`` 300 s after the last active
  trigger before 1 → 0; between 1 and max the HPA scales on the metric, an AverageValue target
  giving total ÷ target replicas whatever the current count; metrics are not cached between
  HPA syncs unless ``useCachedMetrics``).
* Kubernetes HPA: https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/
  (sync every 15 s; desired = ceil(current × metric / target), or ceil(total / target) for an
  AverageValue target; no change within a 10 % tolerance; default behaviour: scale-down
  stabilization 300 s, scale-up none; scale up by at most max(100 %, 4 pods) per 15 s).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Observation:
    """What the deployment looks like at ``now``; areas are integrals since the start."""

    now: float
    #: replicas that serve, and the Deployment's replicas (starting ones included)
    ready: int
    replicas: int
    #: ∫ concurrency dt (requests in flight, waiting on a replica, or buffered), request-seconds
    concurrency_area: float
    #: ∫ busy engine slots dt
    busy_area: float
    #: running and waiting requests now (KEDA's two Redis keys)
    running: int
    waiting: int
    #: requests in the deployment now (in flight, waiting, or buffered by Knative's activator)
    concurrency: int = 0
    #: engine slots per replica
    slots: int = 1


class Autoscaler(Protocol):
    tick_s: float

    def decide(self, obs: Observation) -> int: ...


# --- Knative KPA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpaSettings:
    min_replicas: int
    max_replicas: int
    #: KServe's scaleTarget (spec.scaling.targetConcurrency): concurrency per pod
    target: float
    utilization_pct: float = 70.0
    stable_window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold_pct: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    tick_s: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    #: scale-to-zero-pod-retention-period (the operator's spec.scaling.scaleToZeroGracePeriod)
    retention_s: float = 0.0
    enable_scale_to_zero: bool = True

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_pct / 100.0


class Kpa:
    """Knative's pod autoscaler on concurrency, stable and panic modes."""

    def __init__(self, settings: KpaSettings) -> None:
        self.settings = settings
        self.tick_s = settings.tick_s
        self._areas: deque[tuple[float, float]] = deque([(0.0, 0.0)])
        self._panic_since: float | None = None
        self._max_panic = 0
        self._zero_since: float | None = None
        self.panicking = False

    def _average(self, now: float, area: float, window: float) -> float:
        start = now - window
        # the latest sample at or before the window's start (areas are piecewise linear between
        # samples only approximately; samples come every tick, much shorter than the window)
        base_t, base_a = self._areas[0]
        for t, a in self._areas:
            if t <= start:
                base_t, base_a = t, a
            else:
                break
        span = now - base_t
        return (area - base_a) / span if span > 0 else 0.0

    def decide(self, obs: Observation) -> int:
        s = self.settings
        now = obs.now
        self._areas.append((now, obs.concurrency_area))
        while len(self._areas) > 2 and self._areas[1][0] <= now - s.stable_window_s:
            self._areas.popleft()
        per_pod = s.target * s.utilization_pct / 100.0
        stable = self._average(now, obs.concurrency_area, s.stable_window_s)
        panic = self._average(now, obs.concurrency_area, s.panic_window_s)
        ready = max(1, obs.ready)
        max_up = math.ceil(s.max_scale_up_rate * ready)
        max_down = math.floor(ready / s.max_scale_down_rate)

        def bounded(value: float) -> int:
            return max(min(math.ceil(value / per_pod - 1e-9), max_up), max_down)

        want_stable, want_panic = bounded(stable), bounded(panic)
        over = panic / per_pod / ready >= s.panic_threshold_pct / 100.0
        if over:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since > s.stable_window_s:
            self._panic_since = None
        if self._panic_since is not None:
            self._max_panic = max(self._max_panic, want_panic)
            want = self._max_panic
        else:
            self._max_panic = 0
            want = want_stable
        self.panicking = self._panic_since is not None
        if obs.ready == 0 and obs.concurrency > 0:  # the activator holds requests: wake it
            want = max(want, 1)
        floor = s.min_replicas if s.enable_scale_to_zero else max(1, s.min_replicas)
        want = min(max(want, floor), s.max_replicas)
        if want == 0 and obs.replicas > 0:  # the last pod: retention (and the grace) first
            if self._zero_since is None:
                self._zero_since = now
            if now - self._zero_since < max(s.retention_s, s.scale_to_zero_grace_s):
                return 1
        else:
            self._zero_since = None
        return want


# --- Kubernetes HPA ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HpaSettings:
    min_replicas: int
    max_replicas: int
    sync_s: float = 15.0
    tolerance: float = 0.1
    scale_down_window_s: float = 300.0
    scale_up_window_s: float = 0.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0


class Hpa:
    """The HPA's replica calculation with its default behaviour (stabilization, rate limits)."""

    def __init__(self, settings: HpaSettings) -> None:
        self.settings = settings
        self._recommendations: deque[tuple[float, int]] = deque()

    def recommend(self, now: float, current: int, ratio: float, proposed: int) -> int:
        """``ratio`` is metric / target (per pod); ``proposed`` what the metric asks for."""
        s = self.settings
        if not self._recommendations:  # the run starts in a steady state: the HPA has been
            self._recommendations.append((now - 1e-9, current))  # recommending what runs now
        raw = current if abs(ratio - 1.0) <= s.tolerance else proposed
        raw = min(max(raw, s.min_replicas), s.max_replicas)
        self._recommendations.append((now, raw))
        horizon = max(s.scale_down_window_s, s.scale_up_window_s)
        while self._recommendations and self._recommendations[0][0] < now - horizon:
            self._recommendations.popleft()
        up = min(r for t, r in self._recommendations if t >= now - s.scale_up_window_s)
        down = max(r for t, r in self._recommendations if t >= now - s.scale_down_window_s)
        want = current
        if want < up:
            want = up
        if want > down:
            want = down
        limit = max(current + s.scale_up_pods, math.ceil(current * (1 + s.scale_up_percent / 100)))
        return min(max(min(want, limit), s.min_replicas), s.max_replicas)


@dataclass(frozen=True)
class CpuHpaSettings:
    hpa: HpaSettings
    target_utilization_pct: float


class CpuHpa:
    """KServe's HPA on CPU (RawDeployment without a queue). CPU use is taken as the share of
    busy engine slots: right for the CPU ``sr`` engine, a stand-in for a GPU engine."""

    def __init__(self, settings: CpuHpaSettings) -> None:
        self.settings = settings
        self.tick_s = settings.hpa.sync_s
        self._hpa = Hpa(settings.hpa)
        self._last: tuple[float, float] = (0.0, 0.0)

    def decide(self, obs: Observation) -> int:
        last_t, last_busy = self._last
        self._last = (obs.now, obs.busy_area)
        span = obs.now - last_t
        if obs.ready == 0 or span <= 0:
            return max(obs.replicas, self.settings.hpa.min_replicas)
        utilization = 100.0 * (obs.busy_area - last_busy) / (span * obs.ready * obs.slots)
        ratio = utilization / self.settings.target_utilization_pct
        return self._hpa.recommend(obs.now, obs.replicas, ratio, math.ceil(ratio * obs.ready))


# --- KEDA on the queue -------------------------------------------------------------------------


@dataclass(frozen=True)
class KedaSettings:
    min_replicas: int
    max_replicas: int
    #: spec.scaling.targetQueueLength: the formula running × T + waiting against target T
    target: int
    polling_s: float = 30.0
    cooldown_s: float = 300.0
    hpa_sync_s: float = 15.0


class Keda:
    """KEDA's ScaledObject as the operator builds it: activation 0 ↔ 1 by KEDA every polling
    interval (cooldown before going back to zero), the HPA between 1 and max on
    ``running × T + waiting`` with AverageValue target T, i.e. running + ⌈waiting / T⌉."""

    def __init__(self, settings: KedaSettings) -> None:
        self.settings = settings
        self.tick_s = math.gcd(int(settings.polling_s), int(settings.hpa_sync_s)) or 1
        self._hpa = Hpa(
            HpaSettings(
                min_replicas=max(1, settings.min_replicas),
                max_replicas=settings.max_replicas,
                sync_s=settings.hpa_sync_s,
            )
        )
        # the run starts as if the trigger had just been active: replicas already serving at
        # t=0 get a whole cooldown before KEDA may take them to zero
        self._last_active = 0.0
        self._next_poll = 0.0
        self._next_sync = 0.0

    def decide(self, obs: Observation) -> int:
        s = self.settings
        now, replicas = obs.now, obs.replicas
        metric = obs.running * s.target + obs.waiting
        if now + 1e-9 >= self._next_poll:
            self._next_poll = now + s.polling_s
            if metric > 0:
                self._last_active = now
                if replicas == 0:
                    return max(1, s.min_replicas)
            elif replicas > 0 and s.min_replicas == 0 and now - self._last_active >= s.cooldown_s:
                return 0
        if replicas > 0 and now + 1e-9 >= self._next_sync:
            self._next_sync = now + s.hpa_sync_s
            ratio = metric / (s.target * replicas)
            return self._hpa.recommend(now, replicas, ratio, math.ceil(metric / s.target))
        return replicas
