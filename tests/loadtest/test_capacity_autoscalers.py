"""The autoscalers' rules on small hand-worked traces (loadtest/capacity/autoscalers.py).

Each trace feeds observations tick by tick; the expected replica counts are worked out by hand
from the documented rule quoted beside them.
"""

from __future__ import annotations

from loadtest.capacity.autoscalers import (
    Hpa,
    HpaSettings,
    Keda,
    KedaSettings,
    Kpa,
    KpaSettings,
    Observation,
)


def obs(now, *, ready=1, replicas=None, area=0.0, running=0, waiting=0, concurrency=0):
    return Observation(
        now=now,
        ready=ready,
        replicas=ready if replicas is None else replicas,
        concurrency_area=area,
        busy_area=0.0,
        running=running,
        waiting=waiting,
        concurrency=concurrency,
    )


def test_kpa_stable_mode_targets_seventy_percent_of_the_target() -> None:
    # a steady 3.5 in flight with target 1 at 70 %: ceil(3.5 / 0.7) = 5 pods. With 5 ready
    # pods the panic window sees 3.5 / 0.7 / 5 = 1.0 of capacity, under the 200 % threshold
    kpa = Kpa(KpaSettings(min_replicas=0, max_replicas=10, target=1))
    wants = [kpa.decide(obs(t, ready=5, area=3.5 * t)) for t in range(2, 122, 2)]
    assert set(wants) == {5}
    assert not kpa.panicking


def test_kpa_panics_on_a_burst_and_does_not_scale_down_while_panicking() -> None:
    kpa = Kpa(KpaSettings(min_replicas=0, max_replicas=100, target=1))
    # 1 pod, 10 in flight for 6 s: panic window average 10, 10 / 0.7 / 1 = 14.3 ≥ 2 → panic;
    # ceil(10 / 0.7) = 15 pods at once (max scale-up rate 1000 × 1 ready does not bind)
    area = 0.0
    for t in (2, 4, 6):
        area += 10 * 2
        want = kpa.decide(obs(t, ready=1, area=area))
    assert kpa.panicking and want == 15
    # the burst is gone: no traffic at all. Panic holds the count (never scale down while
    # panicking) until a whole stable window (60 s) has passed since the last over-threshold tick
    held = []
    for t in range(8, 68, 2):
        held.append(kpa.decide(obs(t, ready=15, area=area)))
    assert set(held) == {15}
    # at t=68 (62 s after t=6) panic ends; the stable window (8..68) still averages what it saw
    # since t=8: 0, so the stable count is 0 bounded by max scale-down rate 2: floor(15/2) = 7
    after = kpa.decide(obs(68, ready=15, area=area))
    assert not kpa.panicking
    assert after == 7


def test_kpa_keeps_the_last_pod_for_the_retention_period() -> None:
    # no traffic; the stable count is 0 at once, but the last pod stays max(retention 90 s,
    # grace 30 s) after the autoscaler first wanted zero (at t=2): removed at t=92
    kpa = Kpa(KpaSettings(min_replicas=0, max_replicas=3, target=1, retention_s=90))
    wants = {t: kpa.decide(obs(t, ready=1)) for t in range(2, 100, 2)}
    assert wants[90] == 1
    assert wants[92] == 0


def test_kpa_wakes_from_zero_when_the_activator_holds_requests() -> None:
    kpa = Kpa(KpaSettings(min_replicas=0, max_replicas=3, target=1))
    assert kpa.decide(obs(0.0, ready=0, replicas=0)) == 0
    assert kpa.decide(obs(0.5, ready=0, replicas=0, concurrency=1)) == 1


def test_kpa_respects_min_and_max() -> None:
    kpa = Kpa(KpaSettings(min_replicas=2, max_replicas=4, target=1))
    assert kpa.decide(obs(2, ready=2)) == 2
    assert kpa.decide(obs(4, ready=2, area=100 * 2)) == 4


def test_hpa_tolerance_stabilization_and_rate_limit() -> None:
    hpa = Hpa(HpaSettings(min_replicas=1, max_replicas=100))
    # within 10 % of the target: no change
    assert hpa.recommend(0, current=4, ratio=1.08, proposed=5) == 4
    # scale up: at most max(current + 4, 2 × current) per sync: 4 → 8, not 20
    assert hpa.recommend(15, current=4, ratio=5.0, proposed=20) == 8
    # load gone: the highest recommendation of the last 300 s (8) holds the count
    assert hpa.recommend(30, current=8, ratio=0.0, proposed=0) == 8
    assert hpa.recommend(315, current=8, ratio=0.0, proposed=0) == 8  # 8 was at t=15
    assert hpa.recommend(316, current=8, ratio=0.0, proposed=0) == 1


def test_keda_activation_hpa_and_cooldown() -> None:
    keda = Keda(KedaSettings(min_replicas=0, max_replicas=10, target=2, cooldown_s=300))
    assert keda.tick_s == 15
    # t=0: KEDA's poll sees 5 waiting at zero replicas and activates: 1
    assert keda.decide(obs(0, ready=0, replicas=0, waiting=5)) == 1
    # t=15: the HPA (AverageValue 2): running × 2 + waiting = 1 × 2 + 4 = 6 → ceil(6 / 2) = 3
    assert keda.decide(obs(15, ready=1, running=1, waiting=4)) == 3
    # t=30: queue empty; KEDA's poll notes it idle; the HPA keeps 3 (300 s stabilization)
    assert keda.decide(obs(30, ready=3)) == 3
    wants = {t: keda.decide(obs(t, ready=3)) for t in range(45, 360, 15)}
    # the last active poll was t=0: cooldown ends at 300, the next poll (every 30 s) is t=300
    assert wants[285] == 3
    assert wants[300] == 0


def test_keda_never_below_min_replicas() -> None:
    keda = Keda(KedaSettings(min_replicas=2, max_replicas=10, target=2, cooldown_s=60))
    for t in range(0, 900, 15):
        want = keda.decide(obs(t, ready=2))
        assert want == 2


def test_cpu_hpa_scales_on_the_busy_share_of_engine_slots() -> None:
    from loadtest.capacity.autoscalers import CpuHpa, CpuHpaSettings

    hpa = CpuHpa(CpuHpaSettings(HpaSettings(min_replicas=1, max_replicas=10), 80))
    assert hpa.tick_s == 15

    def at(now: float, ready: int, busy_area: float) -> int:
        return hpa.decide(
            Observation(
                now, ready, ready, concurrency_area=0.0, busy_area=busy_area, running=0, waiting=0
            )
        )

    # 2 replicas fully busy for 15 s: 100 % against 80 % → ratio 1.25 → ceil(1.25 × 2) = 3
    assert at(15, 2, 30.0) == 3
    # 3 replicas, 75 % busy (33.75 of 45 slot-seconds): within 10 % of 80 % → no change
    assert at(30, 3, 30.0 + 33.75) == 3
