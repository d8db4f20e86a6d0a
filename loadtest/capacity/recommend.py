"""The cheapest scaling settings that meet a latency target, as a patch to the user's YAML.

Candidates vary ``spec.scaling`` (min/max replicas, the autoscaler's target, the scale-to-zero
grace) and each is parsed by the operator's own parser (a setting it would refuse is skipped).
Every candidate is simulated on the same traffic. For each (min, target, grace) the smallest
``maxReplicas`` that meets the target is found by bisection (more replicas never make latency
worse here), so the search runs a few simulations per combination, not the whole grid.

A refused or unfinished request counts as infinitely slow, so a setting that sheds load cannot
meet a latency target by dropping the slow part of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import yaml

from loadtest.capacity.deployment import HPA, KEDA, KNATIVE, DeploymentError, parse_document
from loadtest.capacity.simulate import Outcome, SimSettings, simulate

#: the autoscaler's own target field in spec.scaling, and the values tried
TARGETS = {
    KNATIVE: ("targetConcurrency", (1, 2, 4)),
    KEDA: ("targetQueueLength", (1, 2, 4, 8)),
    HPA: ("targetCpuUtilization", (50, 70, 90)),
}
GRACES = (None, "60s", "5m", "15m")


def minimums(limit: int) -> list[int]:
    """minReplicas tried: 0 (scale to zero), then powers of two up to ``limit``. A floor gives
    the headroom an autoscaler's formula may not (KEDA's running + ⌈waiting / T⌉ adds a
    replica only once work waits)."""
    values, value = [0], 1
    while value <= limit:
        values.append(value)
        value *= 2
    return values


@dataclass(frozen=True)
class Evaluation:
    fields: dict
    p95_s: float
    cost: float
    results: dict


def p95_with_misses(outcome: Outcome) -> float:
    """The 95th percentile of end-to-end latency over every offered request (refused or
    unfinished ones count as infinite)."""
    total = outcome.end - outcome.arrival + outcome.overhead_s
    total = np.where(np.isnan(total), np.inf, total)
    if not len(total):
        return 0.0
    return float(np.percentile(total, 95, method="higher"))


def patched(document: dict, fields: dict) -> dict:
    patched_doc = copy.deepcopy(document)
    scaling = patched_doc.setdefault("spec", {}).setdefault("scaling", {})
    for key, value in fields.items():
        if value is None:
            scaling.pop(key, None)
        else:
            scaling[key] = value
    return patched_doc


def patch_text(document: dict, fields: dict) -> str:
    """The fields that differ from the user's spec.scaling, as a YAML merge patch (a null
    removes a field, so its default applies)."""
    current = (document.get("spec") or {}).get("scaling") or {}
    changed = {k: v for k, v in fields.items() if current.get(k) != v}
    return yaml.safe_dump({"spec": {"scaling": changed}}, sort_keys=False)


def recommend(
    document: dict,
    base: SimSettings,
    *,
    p95_target_s: float,
    cost_of: Callable[[dict], float],
    summarize: Callable[[Outcome], dict],
    max_replicas_limit: int,
    log: Callable[[str], None] = lambda _: None,
) -> Evaluation | None:
    """The cheapest candidate whose p95 (with misses) is at most ``p95_target_s``."""
    first = parse_document(document)
    target_field, target_values = TARGETS[first.autoscaler]
    graces = GRACES if first.autoscaler != HPA else (None,)
    best: Evaluation | None = None
    for minimum in minimums(max_replicas_limit):
        for target in target_values:
            # the grace only matters to a deployment that scales to zero
            for grace in graces if minimum == 0 else (None,):
                fields = {
                    "minReplicas": minimum,
                    target_field: target,
                    "scaleToZeroGracePeriod": grace,
                }
                found = _smallest_max(
                    document,
                    base,
                    fields,
                    p95_target_s,
                    max(1, minimum),
                    max_replicas_limit,
                    summarize,
                    log,
                )
                if found is None:
                    continue
                found_cost = cost_of(found.results)
                found = Evaluation(found.fields, found.p95_s, found_cost, found.results)
                if best is None or _rank(document, found) < _rank(document, best):
                    best = found
    return best


def _rank(document: dict, evaluation: Evaluation) -> tuple[float, int, float]:
    """Cheaper first; at the same cost, fewer changes to the user's spec, then lower p95."""
    current = (document.get("spec") or {}).get("scaling") or {}
    changes = sum(current.get(k) != v for k, v in evaluation.fields.items())
    return round(evaluation.cost, 9), changes, evaluation.p95_s


def _evaluate(document, base, fields, summarize, log) -> Evaluation | None:
    try:
        deployment = parse_document(patched(document, fields))
    except DeploymentError:
        return None
    settings = replace(base, deployment=deployment)
    outcome = simulate(settings)
    p95 = p95_with_misses(outcome)
    log(f"  {fields}: p95 {p95:.1f} s")
    return Evaluation(fields, p95, math.nan, summarize(outcome))


def _smallest_max(
    document, base, fields, p95_target_s, low, high, summarize, log
) -> Evaluation | None:
    top = _evaluate(document, base, {**fields, "maxReplicas": high}, summarize, log)
    if top is None or top.p95_s > p95_target_s:
        return None
    best = top
    while low < high:
        middle = (low + high) // 2
        trial = _evaluate(document, base, {**fields, "maxReplicas": middle}, summarize, log)
        if trial is not None and trial.p95_s <= p95_target_s:
            best, high = trial, middle
        else:
            low = middle + 1
    return best
