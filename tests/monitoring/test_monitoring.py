"""Alert rules and dashboard: promtool checks and unit tests; every metric they use exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import predictor.metrics  # noqa: F401 - registers the predictor's metrics
from tests.conftest import ROOT

MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "upscaler-rules.yaml"
RULE_TESTS = MONITORING / "tests" / "upscaler-rules.test.yaml"
DASHBOARD = MONITORING / "upscaler-dashboard.json"
METRIC_NAME = re.compile(r"\b(upscaler_[a-z0-9_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (.ci/run installs it)")
    return path


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def exported_sample_names() -> set[str]:
    """Every series name the predictor and the operator export (``_bucket``, ``_total``, …)."""
    from upscaler_operator.metrics import Metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names: set[str] = set()
    for registry in (REGISTRY, Metrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_monitoring_rules_pass_promtool_check_and_unit_tests() -> None:
    check = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_monitoring_every_alert_has_a_firing_unit_test() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_monitoring_queries_use_only_exported_metrics() -> None:
    exported = exported_sample_names()
    used = {
        name
        for expr in rule_expressions() + dashboard_expressions()
        for name in METRIC_NAME.findall(expr)
    }
    assert used, "no metric names found"
    assert used <= exported, sorted(used - exported)


def test_monitoring_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query (Grafana's variables filled in) as a rule."""
    exprs = [
        expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$engine", ".*")
        for expr in dashboard_expressions()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_monitoring_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(set(titles)) == len(titles)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(titles)
    for needed in ("Latency by stage", "Throughput", "Error rate", "Queue depth", "list price"):
        assert any(needed in title for title in titles), needed
    variables = {item["name"] for item in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "engine"}
