"""Fixtures of the chart tests: the chart loaded once, and a renderer returning objects.

Rendering is offline (helm-python-sdk runs Helm's own Go engine in-process). The
dependency charts (nats, valkey, clickhouse) are not vendored: chart repositories are out
of reach here, and Helm renders the parent chart's templates without them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "switchboard"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "sb"
NAMESPACE = "llm"

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    """One values file as a dict."""
    values: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return values


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    """The chart, loaded once for the session."""
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[[dict[str, Any] | None], list[Manifest]]:
    """Render with values (merged over the chart's defaults) into Kubernetes objects."""

    def _render(values: dict[str, Any] | None = None) -> list[Manifest]:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
        objects: list[Manifest] = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                continue
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return objects

    return _render


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    """Objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def pod_templates(objects: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    """(owner, pod template or pod) of every workload: Deployments, CronJobs, Pods."""
    found: list[tuple[Manifest, dict[str, Any]]] = []
    for o in objects:
        if o["kind"] == "Deployment":
            found.append((o, o["spec"]["template"]))
        elif o["kind"] == "CronJob":
            found.append((o, o["spec"]["jobTemplate"]["spec"]["template"]))
        elif o["kind"] == "Pod":
            found.append((o, o))
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (the only form the chart writes) selects labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
