"""The Helm chart, rendered offline and checked object by object.

Rendered with the default values and every ci/*-values.yaml, then validated against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) and against the rules
the chart promises an SRE: probes, limits and a locked-down securityContext on every
container; autoscalers, budgets and policies that point at real workloads; credentials only
by reference; a values schema that refuses unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    Manifest,
    by_kind,
    helm_python,
    load_values,
    pod_templates,
    selects,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion >= 1.27) whose schemas
# kubernetes-validate ships is checked, and the newest.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources: no upstream schema; checked by the assertions below instead.
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
COMPONENTS = ("edge", "router", "metering", "analytics")

Render = Callable[[dict[str, Any] | None], list[Manifest]]

VALUE_SETS = [pytest.param({}, id="default")] + [
    pytest.param(load_values(path), id=path.stem) for path in CI_VALUES
]


@pytest.fixture(params=VALUE_SETS)
def objects(request: pytest.FixtureRequest, render: Render) -> list[Manifest]:
    """The objects rendered from one value set (default values, then each ci file)."""
    return render(request.param)


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a pod template, init containers included."""
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def deployment(objects: list[Manifest], component: str) -> Manifest:
    """The Deployment of one component."""
    (found,) = [
        d
        for d in by_kind(objects, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


# --- Lint and schema ---------------------------------------------------------------------


def test_ci_values_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"production-values.yaml", "minimal-values.yaml"} <= names


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_strict(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.30.0")
    # The dependency charts are fetched by `helm dependency build`, which needs the chart
    # repositories; everything else must be clean, warnings included.
    missing = "chart directory is missing these dependencies"
    problems = [m for m in report["messages"] if m["severity"] >= 2 and missing not in m["error"]]
    assert problems == []
    assert [e for e in report["errors"] if missing not in e] == []


@pytest.mark.parametrize(
    "values",
    [
        {"bogus": 1},
        {"default": {"bogus": 1}},
        {"components": {"edge": {"resources": {"limits": {"gpu": 1}}}}},
        {"components": {"scheduler": {"enabled": True}}},
        {"components": {"router": {"egress": ["internet"]}}},
        {"secrets": {"existingSecret": ""}},
        {"secrets": {"keys": {"openrouterApiKey": "OPENROUTER_API_KEY", "other": "X"}}},
        {"connections": {"nats": {"url": "http://nats:4222"}}},
        {"backup": {"target": "tape"}},
        {"networkPolicy": {"egress": {"nats": {"ports": [4222], "from": []}}}},
        {"default": {"replicas": "two"}},
    ],
    ids=repr,
)
def test_schema_refuses(chart: Any, values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name="sb", namespace=NAMESPACE)


def test_schema_accepts_every_ci_file(chart: Any) -> None:
    for path in CI_VALUES:
        chart.validate_schema(chart.merge_values(load_values(path)))


def test_every_value_is_commented() -> None:
    """Each value of values.yaml has a comment on its line or above it, or above the map
    holding it (STYLE: every value commented)."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    def commented(index: int) -> bool:
        return "#" in lines[index] or (index > 0 and lines[index - 1].strip().startswith("#"))

    def parent(index: int) -> int | None:
        for above in range(index - 1, -1, -1):
            text = lines[above].strip()
            if (
                text
                and not text.startswith(("#", "- "))
                and indent(lines[above]) < indent(lines[index])
            ):
                return above
        return None

    uncommented = []
    for number, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith(("#", "- ")) or not re.match(r"^[\w.$/-]+:", text):
            continue
        if text.endswith(":"):
            continue  # a map: its values are checked
        holder = parent(number)
        if not (commented(number) or (holder is not None and commented(holder))):
            uncommented.append(f"{number + 1}: {text}")
    assert uncommented == []


# --- Every rendered object is valid Kubernetes ---------------------------------------------


def test_manifests_are_valid_kubernetes(objects: list[Manifest]) -> None:
    assert objects
    for obj in objects:
        assert obj["metadata"]["name"], obj
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_names_are_unique_and_short(objects: list[Manifest]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert all(len(name) <= 63 for _, name in keys)


def test_no_secret_objects_and_labels(objects: list[Manifest]) -> None:
    assert by_kind(objects, "Secret") == []
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "sb"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# --- Containers ------------------------------------------------------------------------------


def test_every_container_is_locked_down(objects: list[Manifest]) -> None:
    for owner, pod in pod_templates(objects):
        pod_security = pod["spec"].get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, owner["metadata"]["name"]
        assert pod["spec"].get("automountServiceAccountToken") is False
        for container in containers(pod):
            where = f"{owner['kind']}/{owner['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert not security.get("privileged"), where
            limits = container["resources"]["limits"]
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits), where
            assert {"cpu", "memory"} <= set(requests), where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if owner["kind"] != "Pod":
                assert "/tmp" in mounts, where  # noqa: S108 (the pods' writable emptyDir)


def test_every_service_container_has_probes_on_its_ports(objects: list[Manifest]) -> None:
    for d in by_kind(objects, "Deployment"):
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        for container in containers(d["spec"]["template"]):
            ports = {p["name"] for p in container["ports"]}
            assert "ops" in ports
            for probe, path in (
                ("livenessProbe", "/health/live"),
                ("readinessProbe", "/health/ready"),
                ("startupProbe", "/health/live"),
            ):
                get = container[probe]["httpGet"]
                assert get["path"] == path
                assert get["port"] in ports
                # the edge answers on its API port, the workers on the ops port
                assert get["port"] == ("http" if component == "edge" else "ops")
            env = env_of(container)
            assert env["OPS_HOST"]["value"] == "0.0.0.0"  # noqa: S104 (a pod must be scraped)
            assert env["OPS_PORT"]["value"] == str(
                next(p["containerPort"] for p in container["ports"] if p["name"] == "ops")
            )


def test_env_names_are_unique_and_known(objects: list[Manifest]) -> None:
    """Every variable the chart sets is a documented setting (README) or a chart helper."""
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", readme, re.MULTILINE))
    helpers = {"OPS_HOST", "OPS_PORT", "SSL_CERT_FILE", "VALKEY_PASSWORD", "CLICKHOUSE_PASSWORD"}
    for d in by_kind(objects, "Deployment"):
        for container in containers(d["spec"]["template"]):
            names = [e["name"] for e in container["env"]]
            assert len(names) == len(set(names)), names
            assert set(names) - documented - helpers == set()


def test_router_writes_only_to_mounted_volumes(objects: list[Manifest]) -> None:
    (router,) = containers(deployment(objects, "router")["spec"]["template"])
    env = env_of(router)
    mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
    cache = Path(env["ROUTER_CATALOG_CACHE"]["value"])
    assert str(cache.parent) in mounts
    assert not mounts[str(cache.parent)].get("readOnly")
    assert env["SWITCHBOARD_DATA_DIR"]["value"].startswith("/tmp/")  # noqa: S108


def test_credentials_only_by_reference(objects: list[Manifest]) -> None:
    """No credential is a literal: each comes from a secretKeyRef or expands one."""
    secretish = re.compile(r"(KEY|TOKEN|PASSWORD|SALT|SECRET)$|^(REDIS_URL|CLICKHOUSE_URL)$")
    for _, pod in pod_templates(objects):
        for container in containers(pod):
            refs = {
                e["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            for entry in container.get("env", []):
                if not secretish.search(entry["name"]):
                    continue
                if "valueFrom" in entry:
                    assert "secretKeyRef" in entry["valueFrom"], entry
                else:
                    # only a URL built from a secret-held password: $(VAR) expansion
                    expanded = set(re.findall(r"\$\(([A-Z_]+)\)", entry["value"]))
                    assert expanded and expanded <= refs, entry


def test_sentinel_values_never_reach_a_manifest(render: Render) -> None:
    """Everything a user may point at a secret is a name or key, never the secret itself."""
    sentinel = "sk-or-SENTINEL-do-not-inline"
    values = load_values(CHART / "ci" / "production-values.yaml")
    values["secrets"]["existingSecret"] = "prod-credentials"
    objects = render(values)
    text = yaml.safe_dump_all(objects)
    assert sentinel not in text
    assert "prod-credentials" in text
    # the NATS passwords stay environment references in the NATS server config values
    users = values["nats"]["config"]["merge"]["authorization"]["users"]
    assert all(u["password"].startswith("<< $") for u in users)


# --- Controllers point at real workloads -----------------------------------------------------


def test_autoscalers_and_budgets_target_real_workloads(objects: list[Manifest]) -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    scaled: list[str] = []
    for obj in by_kind(objects, "HorizontalPodAutoscaler") + by_kind(objects, "ScaledObject"):
        target = obj["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in deployments
        scaled.append(target["name"])
    assert len(scaled) == len(set(scaled)), "a Deployment has two autoscalers"
    for name in scaled:
        # the autoscaler owns the replica count
        assert "replicas" not in deployments[name]["spec"]
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        matched = [
            d
            for d in deployments.values()
            if selects(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, pdb["metadata"]["name"]
    for d in deployments.values():
        assert selects(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        for constraint in d["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(constraint["labelSelector"], d["spec"]["template"]["metadata"]["labels"])


def test_services_and_monitors_select_pods(objects: list[Manifest]) -> None:
    pods = [pod["metadata"]["labels"] for _, pod in pod_templates(objects)]
    services = by_kind(objects, "Service")
    for svc in services:
        assert any(
            all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()) for labels in pods
        )
        assert "ops" in {p["name"] for p in svc["spec"]["ports"]}
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert any(selects(monitor["spec"]["selector"], s["metadata"]["labels"]) for s in services)
        assert monitor["spec"]["endpoints"] == [
            {
                "port": "ops",
                "path": "/metrics",
                "interval": monitor["spec"]["endpoints"][0]["interval"],
            }
        ]


def test_network_policies_select_real_pods(objects: list[Manifest]) -> None:
    policies = by_kind(objects, "NetworkPolicy")
    workloads = pod_templates(objects)
    for policy in policies:
        assert any(
            selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])
            for _, pod in workloads
        )
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    if not policies:
        return
    for owner, pod in workloads:
        if owner["kind"] == "Pod":
            continue  # the helm test pod
        assert any(selects(p["spec"]["podSelector"], pod["metadata"]["labels"]) for p in policies)


def test_only_the_edge_is_reachable_from_outside(objects: list[Manifest]) -> None:
    for svc in by_kind(objects, "Service"):
        if svc["metadata"]["labels"]["app.kubernetes.io/component"] != "edge":
            assert svc["spec"]["type"] == "ClusterIP"
            assert [p["name"] for p in svc["spec"]["ports"]] == ["ops"]
    for ingress in by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "sb-switchboard-edge"
    for policy in by_kind(objects, "NetworkPolicy"):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports <= ({"http", "ops"} if component == "edge" else {"ops"})


EXPECTED_EGRESS = {
    "edge": {4222, 6379},
    "router": {4222, 443},
    "metering": {4222, 8123, 8443},
    "analytics": {4222, 443},
}


def test_each_component_reaches_only_what_it_needs(render: Render) -> None:
    objects = render({"components": {"analytics": {"enabled": True}}})
    for policy in by_kind(objects, "NetworkPolicy"):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        rules = policy["spec"]["egress"]
        dns, *others = rules
        assert {p["port"] for p in dns["ports"]} == {53}
        tcp = {p["port"] for rule in others for p in rule["ports"]}
        if component == "backup":
            continue
        assert tcp == EXPECTED_EGRESS[component], component
        for rule in others:
            if 4222 in {p["port"] for p in rule["ports"]}:
                # the bundled NATS: only its pods
                assert (
                    rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nats"
                )


# --- Specific features -------------------------------------------------------------------------


def test_routing_config_is_mounted_from_a_configmap(render: Render) -> None:
    example = yaml.safe_load((REPO / "deploy" / "config" / "routing.example.yaml").read_text())
    objects = render({"routingConfig": example})
    (configmap,) = by_kind(objects, "ConfigMap")
    assert yaml.safe_load(configmap["data"]["routing.yaml"]) == example
    template = deployment(objects, "router")["spec"]["template"]
    (router,) = containers(template)
    config = Path(env_of(router)["SWITCHBOARD_CONFIG"]["value"])
    mount = next(m for m in router["volumeMounts"] if m["mountPath"] == str(config.parent))
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "checksum/routing-config" in template["metadata"]["annotations"]
    # without a routing config: no ConfigMap and no SWITCHBOARD_CONFIG (built-in default)
    plain = render({})
    assert by_kind(plain, "ConfigMap") == []
    assert "SWITCHBOARD_CONFIG" not in env_of(
        containers(deployment(plain, "router")["spec"]["template"])[0]
    )


def test_component_values_override_defaults_even_when_false(render: Render) -> None:
    objects = render(
        {
            "components": {
                "router": {
                    "autoscaling": {"enabled": False},
                    "replicas": 4,
                    "pdb": {"enabled": False},
                }
            }
        }
    )
    router = deployment(objects, "router")
    assert router["spec"]["replicas"] == 4
    names = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] in {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    }
    assert "sb-switchboard-router" not in names
    assert "sb-switchboard-edge" in names
    # the rest of the default block still applies
    assert (
        router["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        == "1Gi"
    )


def test_disabled_components_render_nothing(render: Render) -> None:
    objects = render({"components": {"metering": {"enabled": False}}})
    assert all(
        o["metadata"]["labels"].get("app.kubernetes.io/component") != "metering" for o in objects
    )


def test_production_values(render: Render) -> None:
    values = load_values(CHART / "ci" / "production-values.yaml")
    objects = render(values)
    assert values["nats"]["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["nats"]["config"]["jetstream"]["enabled"] is True
    for component in COMPONENTS:
        (container,) = containers(deployment(objects, component)["spec"]["template"])
        env = env_of(container)
        # its own NATS user, from the Secret; the extra CA bundle for every TLS client
        assert (
            env["NATS_URL"]["valueFrom"]["secretKeyRef"]["key"] == f"NATS_URL_{component.upper()}"
        )
        assert env["SSL_CERT_FILE"]["value"].startswith("/etc/switchboard/ca/")
    # KEDA on consumer lag for the JetStream consumers, CPU HPAs for the request path
    scaled = {s["metadata"]["name"]: s for s in by_kind(objects, "ScaledObject")}
    assert set(scaled) == {"sb-switchboard-metering", "sb-switchboard-analytics"}
    for name, consumer in (
        ("metering", "switchboard-metering"),
        ("analytics", "switchboard-analytics"),
    ):
        (trigger, _cpu) = scaled[f"sb-switchboard-{name}"]["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["stream"] == "SWITCHBOARD_USAGE"
        assert trigger["metadata"]["consumer"] == consumer
        env = env_of(containers(deployment(objects, name)["spec"]["template"])[0])
        assert env[f"{name.upper()}_CONSUMER"]["value"] == consumer
    assert {h["metadata"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler")} == {
        "sb-switchboard-edge",
        "sb-switchboard-router",
    }
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"]["groups"]
    (cron,) = by_kind(objects, "CronJob")
    assert (
        "BACKUP DATABASE"
        in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    )


def test_nats_users_may_use_only_their_subjects() -> None:
    values = load_values(CHART / "ci" / "production-values.yaml")
    users = {
        u["user"]: u["permissions"]
        for u in values["nats"]["config"]["merge"]["authorization"]["users"]
    }
    assert set(users) == set(COMPONENTS)
    for name, permissions in users.items():
        for direction in ("publish", "subscribe"):
            allowed = permissions[direction]["allow"]
            assert ">" not in allowed and "$JS.API.>" not in allowed, name
    assert "switchboard.v1.chat.request" in users["edge"]["publish"]["allow"]
    assert "switchboard.v1.chat.request" in users["router"]["subscribe"]["allow"]
    assert "switchboard.v1.chat.request" not in users["router"]["publish"]["allow"]
    assert "switchboard.v1.usage.>" in users["router"]["publish"]["allow"]
    # The edge publishes the usage events of cache hits (tests/e2e/test_nats_permissions.py).
    assert "switchboard.v1.usage.recorded" in users["edge"]["publish"]["allow"]
    for consumer in ("metering", "analytics"):
        publish = users[consumer]["publish"]["allow"]
        assert f"$JS.ACK.SWITCHBOARD_USAGE.switchboard-{consumer}.>" in publish
        assert all(
            f"switchboard-{consumer}" in s or not s.startswith("$JS.API.CONSUMER") for s in publish
        )
        assert not any(s.startswith("switchboard.v1.usage") for s in publish)


def test_helm_test_pod_sends_a_chat_request(render: Render) -> None:
    (pod,) = by_kind(render({}), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    assert env["EDGE_URL"]["value"] == "http://sb-switchboard-edge:80"
    assert (
        env["SWITCHBOARD_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "SWITCHBOARD_TEST_API_KEY"
    )
    assert "/v1/chat/completions" in container["args"][0]


def test_bundled_infrastructure_is_wired(render: Render) -> None:
    objects = render(load_values(CHART / "ci" / "minimal-values.yaml"))
    edge = env_of(containers(deployment(objects, "edge")["spec"]["template"])[0])
    assert edge["REDIS_URL"]["value"] == "redis://:$(VALKEY_PASSWORD)@sb-valkey-primary:6379/0"
    metering = env_of(containers(deployment(objects, "metering")["spec"]["template"])[0])
    assert metering["CLICKHOUSE_URL"]["value"].startswith(
        "http://default:$(CLICKHOUSE_PASSWORD)@sb-clickhouse:8123/"
    )
    assert edge["NATS_URL"]["value"] == f"nats://sb-nats.{NAMESPACE}.svc:4222"


def test_tls_everywhere_from_values(render: Render) -> None:
    objects = render(
        {
            "connections": {"nats": {"tls": True}, "clickhouse": {"tls": True}},
            "clickhouse": {"enabled": True},
        }
    )
    edge = env_of(containers(deployment(objects, "edge")["spec"]["template"])[0])
    assert edge["NATS_URL"]["value"].startswith("tls://")
    metering = env_of(containers(deployment(objects, "metering")["spec"]["template"])[0])
    assert metering["CLICKHOUSE_URL"]["value"].startswith("https://")
    assert ":8443/" in metering["CLICKHOUSE_URL"]["value"]


def test_external_nats_needs_a_url(chart: Any) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape("connections.nats.url")):
        chart.render({"nats": {"enabled": False}}, name="sb", namespace=NAMESPACE)
    rendered = chart.render(
        {"nats": {"enabled": False}, "connections": {"nats": {"url": "tls://nats.infra:4222"}}},
        name="sb",
        namespace=NAMESPACE,
    )
    assert "tls://nats.infra:4222" in rendered["switchboard/templates/deployment.yaml"]


def test_alerts_copy_matches_deploy_prometheus() -> None:
    chart_copy = CHART / "files" / "alerts.yaml"
    assert yaml.safe_load(chart_copy.read_text())["groups"]
    source = REPO / "deploy" / "prometheus" / "alerts.yaml"
    if not source.exists():
        pytest.skip("deploy/prometheus/alerts.yaml does not exist yet")
    assert chart_copy.read_text() == source.read_text(), (
        "copy deploy/prometheus/alerts.yaml to deploy/helm/switchboard/files/alerts.yaml"
    )
