"""The alert rules in deploy/prometheus: valid YAML and PromQL, quick to fire.

That every ``switchboard_*`` metric they use is really exported is checked against live
services in tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

DEPLOY = Path(__file__).parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "switchboard-dashboard.json"
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    assert match, duration
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_rules_parse_and_fire_within_a_minute() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on invalid PromQL
        assert _seconds(rule.get("for", "0s")) <= 30, rule["alert"]
        for window in re.findall(r"\[([0-9]+[smh])\]", rule["expr"]):
            assert _seconds(window) <= 60, (rule["alert"], window)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize(
    "needle",
    [
        "switchboard_chat_requests_total",  # error rate
        "switchboard_http_request_duration_seconds_bucket",  # p95 latency
        "switchboard_consumer_pending",  # consumer lag
        "switchboard_breaker_state",  # breaker open
        'layer="quota"',  # budget exhaustion
        'up{job=~".*router.*"}',  # no healthy router
    ],
)
def test_rules_cover_the_issue(needle: str) -> None:
    assert any(needle in rule["expr"] for rule in _rules())


def test_bad_promql_is_refused() -> None:
    with pytest.raises(ValueError, match=r"."):
        promql_parser.parse("sum(rate(switchboard_x[1m])")


def test_dashboard_queries_parse() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "switchboard"
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])
