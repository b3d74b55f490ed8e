"""The Helm chart, checked with Helm's own engine (helm-python-sdk = Helm v4's Go SDK) and Kubernetes schemas.

Every ``ci/*-values.yaml`` scenario lints clean (strict) and renders; every rendered core object validates
against the Kubernetes 1.30 schemas (strict: unknown fields fail); the prometheus-operator objects are checked
structurally; the dashboards in the ConfigMaps equal ``dashboards/``; the PrometheusRule equals
``alerts.render.render_rules`` with the same thresholds; the rendered exporter config and web config (HTTPS)
pass the exporter's own validation; and the chart's copies of the dashboards and rules have not drifted from the sources.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (in the [test] extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

from alerts.render import DEFAULT_THRESHOLDS, render_rules  # noqa: E402
from exporter.config import ConfigError, parse_config  # noqa: E402
from exporter.web.webconfig import parse_web_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "docker-image-exporter"
KUBE_VERSION = "1.30.0"
RELEASE = "die"
NAMESPACE = "monitoring"
SCENARIOS = ("default", "remediation", "all", "tls", "containerd", "crio")
#: What each runtime mounts: (socket volume, socket host path key, image-fs volume, image-fs host path key).
RUNTIME_MOUNTS = {
    "docker": ("docker-socket", "dockerSocket", "docker-data-root", "dockerDataRoot"),
    "containerd": ("runtime-socket", "containerdSocket", "image-fs", "containerdImageFs"),
    "crio": ("runtime-socket", "crioSocket", "image-fs", "crioImageFs"),
}
DEFAULT_HOST_PATHS = {
    "dockerSocket": "/var/run/docker.sock",
    "dockerDataRoot": "/var/lib/docker",
    "containerdSocket": "/run/containerd/containerd.sock",
    "containerdImageFs": "/var/lib/containerd",
    "crioSocket": "/var/run/crio/crio.sock",
    "crioImageFs": "/var/lib/containers/storage",
}
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
SECRET_DIR = "/etc/docker-image-exporter/secrets"
TLS_DIR = "/etc/docker-image-exporter/tls"
WEB_CONFIG_FLAG = "--web.config.file=/etc/docker-image-exporter/config/web.yml"
RULES_FILE = ROOT / "alerts" / "docker-image-exporter.rules.yml"
#: The two values the chart cannot default (no published image; the socket's gid differs between nodes).
REQUIRED: dict[str, Any] = {"image": {"repository": "registry.example.com/die"}, "docker": {"socketGroup": 999}}


def scenario_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}
    assert isinstance(data, dict)
    return data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any], *, required: bool = True) -> list[dict[str, Any]]:
    """Every object the chart renders for `values` (NOTES.txt left out), with REQUIRED filled in unless
    `required` is false (then `values` must carry them itself, as the ci/ scenarios do)."""
    if required:
        values = _merged(REQUIRED, values)
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                objects.append(doc)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def exporter_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "exporter")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(scenario_values(name), required=False) for name in SCENARIOS}


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_helm_assets", ROOT / "scripts" / "sync-helm-assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sync_helm_assets", module)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------- lint/schema


def test_every_scenario_file_exists() -> None:
    assert sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")) == sorted(f"{s}-values.yaml" for s in SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, scenario_values(scenario), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize(
    "values",
    [
        {"imagee": {"tag": "x"}},
        {"web": {"port": 70000}},
        {"log": {"format": "text"}},
        {"prometheusRule": {"thresholds": {"disk_for": ["5m"]}}},
        {"prometheus": {"monitor": {"enabled": "yes"}}},
        {"prometheus": {"monitor": {"sampleLimit": -1}}},
        {"prometheus": {"monitor": {"additionalLabels": {"release": 1}}}},
        {"prometheus": {"monitr": {}}},
        {"docker": {"socketGroup": "docker"}},
        {"docker": {"socketGroup": -1}},
        {"docker": {"runAsRoot": "yes"}},
        {"image": {"registry": 5}},
        {"revisionHistoryLimit": -1},
        {"namespaceOverride": ["a"]},
        {"web": {"tls": {"clientAuthType": "RequireAnyClientCert"}}},
        {"web": {"tls": {"minVersion": "TLS1.2"}}},
        {"web": {"tls": {"enabled": "true"}}},
        {"web": {"headers": {"Server": "die"}}},
        {"prometheus": {"monitor": {"tlsConfig": "insecure"}}},
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"poll": {"intervall": "30s"}}, "intervall"),  # a typo: the exporter would refuse to start
        ({"poll": {"interval": 30}}, "interval"),  # a bare number is no duration
        ({"remediation": {"actions": {"x": {"type": "prune_everything"}}}}, "type"),
        ({"remediation": {"actions": {"x": {"type": "keep_last"}}}}, "keep"),  # keep_last without keep
        ({"remediation": {"dry_run": "yes"}}, "dry_run"),
    ],
)
def test_chart_refuses_a_config_value_the_exporter_would_refuse(config: dict[str, Any], where: str) -> None:
    """values.schema.json embeds docs/config.schema.json: a bad `config` fails at `helm install`, not in the pod."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema({**scenario_values("default"), "config": config})
    assert where in str(refused.value)
    with pytest.raises(ConfigError):
        parse_config(config)


def test_chart_accepts_the_config_values_of_every_scenario() -> None:
    with helm.Chart.load(CHART) as chart:
        for scenario in SCENARIOS:
            chart.validate_schema(scenario_values(scenario))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"remediation": {"enabled": True}}}, "needs credentials"),
        (
            {
                "config": {"remediation": {"enabled": True, "auth": {"bearer_token": "x"}}},
                "webhookAuth": {"bearerToken": "y"},
            },
            "not both",
        ),
        (
            {"config": {"remediation": {"enabled": True}}, "webhookAuth": {"basicAuth": {"password": "p"}}},
            "username is required",
        ),
        ({"prometheusRule": {"enabled": True, "thresholds": {"disk_avail_ratio": 0.1}}}, "unknown threshold"),
        ({"prometheusRule": {"enabled": True, "thresholds": {"disk_for": 300}}}, "must be a string"),
        (
            {"prometheusRule": {"enabled": True, "thresholds": {"disk_avail_ratio_warning_clear": 0.1}}},
            "clears at",
        ),
        ({"web": {"tls": {"enabled": True}}}, "needs web.tls.secretName"),
        (
            {"web": {"tls": {"enabled": True, "secretName": "t", "minVersion": "TLS13", "maxVersion": "TLS12"}}},
            "below web.tls.minVersion",
        ),
        (
            {
                "web": {"tls": {"enabled": True, "secretName": "t"}},
                "prometheus": {"monitor": {"enabled": True, "namespace": "observability"}},
            },
            "set prometheus.monitor.tlsConfig",
        ),
        # values renamed in chart 0.2.0 name their new key instead of being ignored
        ({"dockerSocketGroup": 998}, "dockerSocketGroup was renamed docker.socketGroup"),
        ({"serviceMonitor": {"enabled": True}}, r"serviceMonitor\.\* was renamed prometheus\.monitor\.\*"),
        (
            {"prometheusRule": {"labels": {"release": "x"}}},
            "prometheusRule.labels was renamed prometheusRule.additionalLabels",
        ),
    ],
)
def test_render_refuses_inconsistent_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"docker": {"socketGroup": 998}}, "image.repository is required"),
        ({"docker": {"socketGroup": 998}, "image": {"repository": "", "tag": "0.1.0"}}, "image.repository is required"),
        ({"image": {"repository": "r.example/die"}}, "docker.socketGroup is required"),
        ({"image": {"repository": "r.example/die"}, "docker": {"socketGroup": None}}, "docker.socketGroup is required"),
        ({}, "is required"),
    ],
    ids=["no-repository", "empty-repository", "no-socket-group", "null-socket-group", "nothing"],
)
def test_render_requires_the_image_and_the_socket_group(values: dict[str, Any], message: str) -> None:
    """No published image and no gid that fits every node: a render without them fails naming the value
    instead of deploying an image nobody pushed, or pods that cannot reach the engine (docker_up 0)."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values, required=False)


def test_socket_group_message_says_how_to_find_the_gid() -> None:
    values = {"image": {"repository": "r.example/die"}, "hostPaths": {"dockerSocket": "/run/docker.sock"}}
    with pytest.raises(helm.HelmRenderError) as excinfo:
        render(values, required=False)
    assert "stat -c %g /run/docker.sock" in str(excinfo.value) and "docker.runAsRoot" in str(excinfo.value)


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"repository": "r.example/die"}, "r.example/die:0.1.0"),  # tag: the chart's appVersion
        ({"registry": "r.example", "repository": "team/die", "tag": "1.2.3"}, "r.example/team/die:1.2.3"),
        ({"repository": "die", "digest": DIGEST}, f"die@{DIGEST}"),
        ({"registry": "r.example", "repository": "die", "tag": "1.2", "digest": DIGEST}, f"r.example/die:1.2@{DIGEST}"),
    ],
    ids=["repository-only", "registry-repository-tag", "digest", "tag-and-digest"],
)
def test_image_reference(image: dict[str, Any], expected: str) -> None:
    objects = render({"image": image})
    assert exporter_container(objects)["image"] == expected


def test_global_image_registry_replaces_image_registry() -> None:
    """As in the prometheus-community charts: umbrella charts and mirrors set one registry for all."""
    values = {"image": {"registry": "r.example", "repository": "team/die"}, "global": {"imageRegistry": "mirror.local"}}
    assert exporter_container(render(values))["image"] == "mirror.local/team/die:0.1.0"


def test_socket_group_joins_the_pods_supplemental_groups() -> None:
    pod = one(render({"docker": {"socketGroup": 0}}), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [0]  # a root:root 0660 socket: 0 is a real answer
    values = {
        "docker": {"socketGroup": 998},
        "podSecurityContext": {"runAsUser": 10151, "supplementalGroups": [5, 998]},
    }
    pod = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [998, 5]


def test_run_as_root_needs_no_socket_group() -> None:
    values = {"image": {"repository": "r.example/die"}, "docker": {"runAsRoot": True}}
    values["persistence"] = {"hostPath": "/var/lib/docker-image-exporter"}
    objects = render(values, required=False)
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 0 and pod["securityContext"]["runAsNonRoot"] is False
    assert "supplementalGroups" not in pod["securityContext"]
    # root connects as the socket's owner: still no capability, no privilege escalation
    sc = exporter_container(objects)["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert "initContainers" not in pod  # nothing to chown for root
    kubernetes_validate.validate(one(objects, "DaemonSet"), KUBE_VERSION, strict=True)


def test_namespace_override_moves_every_namespaced_object(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = scenario_values("all")
    chart_namespace = values["namespaceOverride"]
    assert chart_namespace != NAMESPACE
    explicit = {"ServiceMonitor": "monitoring", "PrometheusRule": "monitoring"}
    for obj in rendered["all"]:
        is_dashboard = obj["kind"] == "ConfigMap" and "grafana_dashboard" in obj["metadata"]["labels"]
        expected = "monitoring" if is_dashboard else explicit.get(obj["kind"], chart_namespace)
        assert obj["metadata"]["namespace"] == expected, (obj["kind"], obj["metadata"]["name"])
    sm = one(rendered["all"], "ServiceMonitor")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [chart_namespace]}
    # without the override: the release namespace
    assert {o["metadata"]["namespace"] for o in rendered["default"]} == {NAMESPACE}


def test_revision_history_limit(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert one(rendered["default"], "DaemonSet")["spec"]["revisionHistoryLimit"] == 10
    assert one(rendered["all"], "DaemonSet")["spec"]["revisionHistoryLimit"] == 3


def _alert_names() -> set[str]:
    rules = yaml.safe_load(RULES_FILE.read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_example_routes_name_alerts_that_exist() -> None:
    """Routes in the chart's values, scenarios, README and deploy docs match alerts the rules produce."""
    names = _alert_names()
    sources = [CHART / "values.yaml", CHART / "README.md", ROOT / "docs" / "deploy.md"]
    sources += sorted((CHART / "ci").glob("*.yaml")) + sorted((ROOT / "examples").rglob("*.yml"))
    referenced: dict[str, set[str]] = {}
    for path in sources:
        for name in re.findall(r'alertname=~?\\?"([A-Za-z0-9_|]+)\\?"', path.read_text()):
            for alert in name.split("|"):
                referenced.setdefault(alert, set()).add(path.name)
    assert referenced, "no example route found: the test would check nothing"
    unknown = {alert: files for alert, files in referenced.items() if alert not in names}
    assert unknown == {}, f"routes on alerts no rule produces (known: {sorted(names)})"


# --------------------------------------------------------------------------------------------- objects


EXPECTED_KINDS: dict[str, Counter[str]] = {
    "default": Counter(ConfigMap=1, DaemonSet=1, Service=2, ServiceAccount=1),
    "remediation": Counter(ConfigMap=1, DaemonSet=1, Service=2, ServiceAccount=1, Secret=1),
    # dashboards: one ConfigMap each (counted in the test)
    "all": Counter(DaemonSet=1, Service=2, ServiceAccount=1, ServiceMonitor=1, PrometheusRule=1, NetworkPolicy=1),
    "tls": Counter(ConfigMap=1, DaemonSet=1, Service=2, ServiceAccount=1, Secret=1, ServiceMonitor=1),
    "containerd": Counter(ConfigMap=1, DaemonSet=1, Service=2, ServiceAccount=1),
    "crio": Counter(ConfigMap=1, DaemonSet=1, Service=2, ServiceAccount=1, Secret=1),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_renders_the_expected_objects(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    kinds = Counter(o["kind"] for o in rendered[scenario])
    expected = Counter(EXPECTED_KINDS[scenario])
    if scenario == "all":
        expected["ConfigMap"] = 1 + len(list((ROOT / "dashboards").glob("*.json")))
    assert kinds == expected


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_objects_validate_strictly(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    checked = 0
    for obj in rendered[scenario]:
        if obj["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked >= 5


def test_service_monitor_structure(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["all"]
    sm = one(objects, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # prometheus.monitor.additionalLabels
    assert set(sm["spec"]) <= {"endpoints", "selector", "namespaceSelector", "jobLabel", "sampleLimit"}
    assert sm["spec"]["sampleLimit"] == 20000
    assert "sampleLimit" not in one(rendered["tls"], "ServiceMonitor")["spec"]  # 0: no limit
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [scenario_values("all")["namespaceOverride"]]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    assert endpoint["relabelings"][0]["targetLabel"] == "node"
    # the selector picks exactly one Service (the headless one would double every target) with port http
    selector = sm["spec"]["selector"]
    matching = [s for s in by_kind(objects, "Service") if _selects(selector, s["metadata"].get("labels", {}))]
    assert [s["spec"].get("clusterIP") for s in matching] == [None]
    assert [p["name"] for p in matching[0]["spec"]["ports"]] == ["http"]
    # the job label is the Service's app.kubernetes.io/name, which the DockerImageExporterDown rule matches
    assert matching[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "docker-image-exporter"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "DoesNotExist" and present:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


def test_service_and_headless_service_select_the_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scenario in SCENARIOS:
        objects = rendered[scenario]
        pod_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
        services = by_kind(objects, "Service")
        assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]
        for svc in services:
            assert _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)
            assert svc["spec"]["ports"][0]["targetPort"] == "http"


# --------------------------------------------------------------------------------------------- daemonset


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    objects = rendered[scenario]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    container = exporter_container(objects)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    values = scenario_values(scenario)
    if values.get("docker", {}).get("runAsRoot"):  # opted into root: no socket group needed
        assert pod["securityContext"]["runAsNonRoot"] is False and pod["securityContext"]["runAsUser"] == 0
        assert "supplementalGroups" not in pod["securityContext"]
    else:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10151
        assert pod["securityContext"]["supplementalGroups"] == [values["docker"]["socketGroup"]]
    assert pod["automountServiceAccountToken"] is False
    if scenario == "tls":  # client certificates required: the kubelet cannot pass an HTTPS probe
        assert container["livenessProbe"]["tcpSocket"] == container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    else:
        assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
        assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    runtime = values.get("runtime", "docker")
    socket, socket_key, image_fs, image_fs_key = RUNTIME_MOUNTS[runtime]
    host_paths = {**DEFAULT_HOST_PATHS, **values.get("hostPaths", {})}
    socket_in_pod = "/var/run/docker.sock" if runtime == "docker" else host_paths[socket_key]
    # writable places despite the read-only root: state/audit directory and /tmp only
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly")}
    remediation = bool(values.get("config", {}).get("remediation", {}).get("enabled"))
    assert writable == {"/var/lib/docker-image-exporter", "/tmp"} | ({socket_in_pod} if remediation else set())
    assert mounts[image_fs]["readOnly"] is True
    # the socket is read-write exactly when remediation is on (deleting images needs it)
    assert mounts[socket]["readOnly"] is (not remediation)
    assert mounts[socket]["mountPath"] == socket_in_pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[socket]["hostPath"]["type"] == "Socket"
    assert volumes[socket]["hostPath"]["path"] == host_paths[socket_key]
    assert volumes[image_fs]["hostPath"]["path"] == host_paths[image_fs_key]
    assert mounts[image_fs]["mountPath"] == host_paths[image_fs_key]
    # only the chosen runtime's socket and filesystem are mounted
    assert {v["name"] for v in pod["volumes"]} & {
        "docker-socket",
        "runtime-socket",
        "docker-data-root",
        "image-fs",
    } == {
        socket,
        image_fs,
    }
    config = _config(objects)
    if runtime == "docker":
        assert config["docker"]["host"] == "unix:///var/run/docker.sock" and "runtime" not in config
    else:
        assert config["runtime"]["endpoint"] == f"unix://{host_paths[socket_key]}" and "docker" not in config
    assert config["filesystem"]["path"] == host_paths[image_fs_key]


def test_a_docker_host_beside_a_cri_runtime_is_refused() -> None:
    with pytest.raises(Exception, match=r"config\.docker\.host is set but runtime is containerd"):
        render({"runtime": "containerd", "config": {"docker": {"host": "unix:///var/run/docker.sock"}}})


def test_state_on_host_path_gets_a_chown_init_container(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["remediation"], "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/docker-image-exporter"
    (init,) = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    # The default keeps the history on the node too: an upgrade must not restart min_age or lose the audit log.
    default_pod = one(rendered["default"], "DaemonSet")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in default_pod["volumes"]}["state"]["hostPath"][
        "path"
    ] == "/var/lib/docker-image-exporter"
    assert len(default_pod["initContainers"]) == 1


def test_empty_host_path_keeps_the_state_in_an_empty_dir() -> None:
    values = {"image": {"repository": "r.example/die"}, "docker": {"socketGroup": 998}, "persistence": {"hostPath": ""}}
    pod = one(render(values, required=False), "DaemonSet")["spec"]["template"]["spec"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["state"]
    assert "initContainers" not in pod


def test_args_follow_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    args = exporter_container(rendered["all"])["args"]
    assert "--web.listen-address=:9999" in args
    assert "--log.format=json" in args and "--log.level=debug" in args
    assert args[0] == "--config.file=/etc/docker-image-exporter/config/config.yaml"
    assert args[-1] == "--docker.host=unix:///var/run/docker.sock"
    assert exporter_container(rendered["all"])["image"] == (
        "registry.example.com/mirror/docker-image-exporter:0.1.0"
        "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert exporter_container(rendered["default"])["image"] == "registry.example.com/docker-image-exporter:0.1.0"


# --------------------------------------------------------------------------------------------- config/secret


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cms = [c for c in by_kind(objects, "ConfigMap") if "config.yaml" in c.get("data", {})]
    assert len(cms) == 1
    data = yaml.safe_load(cms[0]["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_config_passes_the_exporters_validation(
    rendered: dict[str, list[dict[str, Any]]], scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(rendered[scenario])
    monkeypatch.setenv("POD_IP", "10.1.2.3")  # the DaemonSet's downward API gives each pod its own
    monkeypatch.setenv("NODE_NAME", "node-1")
    # the credential and certificate files the pod would mount, here in tmp_path
    (tmp_path / "bearer-token").write_text("t0ken\n")
    (tmp_path / "basic-auth-password").write_text("pw\n")
    tls_dir = _dummy_tls_files(tmp_path)
    text = yaml.safe_dump(config).replace(SECRET_DIR, str(tmp_path)).replace(TLS_DIR, str(tls_dir))
    parsed = parse_config(yaml.safe_load(text))
    values = scenario_values(scenario)
    runtime = values.get("runtime", "docker")
    _, socket_key, _, image_fs_key = RUNTIME_MOUNTS[runtime]
    host_paths = {**DEFAULT_HOST_PATHS, **values.get("hostPaths", {})}
    if runtime == "docker":
        assert parsed.docker.host == "unix:///var/run/docker.sock" and parsed.runtime.endpoint is None
    else:  # the CLI refuses both together: the chart sets only the runtime
        assert parsed.docker.host is None and parsed.runtime.endpoint == f"unix://{host_paths[socket_key]}"
    assert parsed.filesystem.path == host_paths[image_fs_key]
    assert parsed.state.path == "/var/lib/docker-image-exporter/state.json"
    assert parsed.remediation.enabled is (scenario not in ("default", "containerd"))
    if scenario == "remediation":
        assert parsed.remediation.auth.bearer_token == "t0ken"
        assert parsed.remediation.auth.basic_auth is not None
        assert parsed.remediation.auth.basic_auth.username == "alertmanager"
        assert parsed.remediation.auth.basic_auth.password == "pw"
        assert [r.action for r in parsed.remediation.routes] == ["free-disk", "clean-dangling"]
        assert parsed.remediation.relay.enabled and parsed.remediation.relay.self_names == ("10.1.2.3:10151",)
    if scenario == "all":
        assert parsed.poll.interval == 15 and parsed.remediation.dry_run is True
        assert parsed.remediation.auth.bearer_token == "t0ken" and parsed.remediation.auth.basic_auth is None
    if scenario == "tls":
        relay = parsed.remediation.relay
        assert relay.enabled and relay.self_names == ("node-1",) and relay.url_template.startswith("https://")
        assert (relay.tls.ca_file, relay.tls.cert_file, relay.tls.key_file) == tuple(
            str(tls_dir / name) for name in ("ca.crt", "tls.crt", "tls.key")
        )


def _dummy_tls_files(tmp_path: Path) -> Path:
    """Stand-ins for the mounted kubernetes.io/tls Secret (the validators only check that they are readable)."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tls_dir / name).write_text(f"dummy {name}\n")
    return tls_dir


def _web_config(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    cm = next(c for c in by_kind(objects, "ConfigMap") if "config.yaml" in c.get("data", {}))
    if "web.yml" not in cm["data"]:
        return None
    data = yaml.safe_load(cm["data"]["web.yml"])
    assert isinstance(data, dict)
    return data


def _tls_values(client_auth: str, **extra: Any) -> dict[str, Any]:
    return {"web": {"tls": {"enabled": True, "secretName": "die-tls", "clientAuthType": client_auth}}, **extra}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_web_config_passes_the_exporters_validation(
    rendered: dict[str, list[dict[str, Any]]], scenario: str, tmp_path: Path
) -> None:
    objects = rendered[scenario]
    web = _web_config(objects)
    args = exporter_container(objects)["args"]
    if scenario != "tls":  # plain HTTP: no web config, no flag
        assert web is None and not any(a.startswith("--web.config.file") for a in args)
        return
    assert web is not None
    assert WEB_CONFIG_FLAG in args
    tls_dir = _dummy_tls_files(tmp_path)
    parsed = parse_web_config(yaml.safe_load(yaml.safe_dump(web).replace(TLS_DIR, str(tls_dir))))
    assert parsed.tls is not None
    assert parsed.tls.cert_file == str(tls_dir / "tls.crt") and parsed.tls.key_file == str(tls_dir / "tls.key")
    assert parsed.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert parsed.tls.client_ca_file == str(tls_dir / "ca.crt")
    assert (parsed.tls.min_version, parsed.tls.max_version) == ("TLS12", "TLS13")
    assert dict(parsed.headers) == scenario_values("tls")["web"]["headers"]


@pytest.mark.parametrize(
    ("values", "expect_tls", "expect_headers"),
    [
        (_tls_values("NoClientCert"), True, False),
        (_tls_values("VerifyClientCertIfGiven"), True, False),
        ({"web": {"headers": {"X-Content-Type-Options": "nosniff"}}}, False, True),
    ],
    ids=["tls-no-client-cert", "tls-verify-if-given", "headers-only"],
)
def test_web_config_variants_pass_the_exporters_validation(
    values: dict[str, Any], expect_tls: bool, expect_headers: bool, tmp_path: Path
) -> None:
    objects = render(values)
    web = _web_config(objects)
    assert web is not None and WEB_CONFIG_FLAG in exporter_container(objects)["args"]
    tls_dir = _dummy_tls_files(tmp_path)
    parsed = parse_web_config(yaml.safe_load(yaml.safe_dump(web).replace(TLS_DIR, str(tls_dir))))
    assert (parsed.tls is not None) is expect_tls
    assert bool(parsed.headers) is expect_headers
    if parsed.tls is not None:
        auth = values["web"]["tls"]["clientAuthType"]
        assert parsed.tls.client_auth_type == auth
        # the CA is only asked for when client certificates are verified (a public-CA Secret has no ca.crt)
        assert parsed.tls.client_ca_file == (None if auth == "NoClientCert" else str(tls_dir / "ca.crt"))
    mounts = {m["name"] for m in exporter_container(objects)["volumeMounts"]}
    assert ("tls" in mounts) is expect_tls


def test_tls_secret_is_mounted_read_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["tls"]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    mount = {m["name"]: m for m in exporter_container(objects)["volumeMounts"]}["tls"]
    assert mount == {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}
    volume = {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]
    # the whole Secret (no items): kubelet then swaps renewed certificates in and the exporter reloads them
    assert volume == {"secretName": "docker-image-exporter-tls", "defaultMode": 0o440}
    annotations = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/web-config" in annotations
    # nothing is mounted, and no flag is passed, without TLS
    for scenario in ("default", "all"):
        default_pod = one(rendered[scenario], "DaemonSet")["spec"]["template"]["spec"]
        assert "tls" not in {v["name"] for v in default_pod["volumes"]}
        assert "checksum/web-config" not in one(rendered[scenario], "DaemonSet")["spec"]["template"]["metadata"].get(
            "annotations", {}
        )


@pytest.mark.parametrize(
    ("client_auth", "expected"),
    [
        (None, {"httpGet": {"path": "/-/ready", "port": "http"}}),
        ("NoClientCert", {"httpGet": {"path": "/-/ready", "port": "http", "scheme": "HTTPS"}}),
        ("VerifyClientCertIfGiven", {"httpGet": {"path": "/-/ready", "port": "http", "scheme": "HTTPS"}}),
        # the kubelet presents no client certificate: only the TCP port can be checked
        ("RequireAndVerifyClientCert", {"tcpSocket": {"port": "http"}}),
    ],
)
def test_probes_follow_the_client_certificate_policy(client_auth: str | None, expected: dict[str, Any]) -> None:
    objects = render(_tls_values(client_auth) if client_auth else {})
    container = exporter_container(objects)
    readiness = container["readinessProbe"]
    assert {k: v for k, v in readiness.items() if k in ("httpGet", "tcpSocket")} == expected
    assert readiness["periodSeconds"] == 10 and readiness["failureThreshold"] == 3
    liveness = container["livenessProbe"]
    if "httpGet" in expected:
        assert liveness["httpGet"] == {**expected["httpGet"], "path": "/-/healthy"}
    else:
        assert liveness["tcpSocket"] == {"port": "http"} and "httpGet" not in liveness
    kubernetes_validate.validate(one(objects, "DaemonSet"), KUBE_VERSION, strict=True)


def test_service_monitor_scrapes_https(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (endpoint,) = one(rendered["tls"], "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    secret = "docker-image-exporter-tls"
    assert endpoint["tlsConfig"] == {
        "serverName": f"{RELEASE}-docker-image-exporter.{NAMESPACE}.svc",
        "ca": {"secret": {"name": secret, "key": "ca.crt"}},
        "cert": {"secret": {"name": secret, "key": "tls.crt"}},
        "keySecret": {"name": secret, "key": "tls.key"},
    }
    # no client certificate is presented when none is required
    (endpoint,) = one(
        render(_tls_values("VerifyClientCertIfGiven", prometheus={"monitor": {"enabled": True}})), "ServiceMonitor"
    )["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and set(endpoint["tlsConfig"]) == {"serverName", "ca"}
    # prometheus.monitor.tlsConfig is passed verbatim (e.g. a ServiceMonitor in Prometheus's namespace)
    own = {"ca": {"secret": {"name": "exporter-ca", "key": "ca.crt"}}, "serverName": "exporter.example"}
    monitor = {"enabled": True, "namespace": "obs", "tlsConfig": own}
    values = _tls_values("NoClientCert", prometheus={"monitor": monitor})
    (endpoint,) = one(render(values), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == own
    # plain HTTP: no scheme, no tlsConfig
    (endpoint,) = one(rendered["all"], "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint


def _notes(values: dict[str, Any]) -> str:
    values = _merged(REQUIRED, values)
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(next(text for path, text in manifests.items() if path.endswith("NOTES.txt")))


def test_notes_warn_about_a_plain_http_relay_under_tls() -> None:
    relay = {"enabled": True, "self_names": ["${POD_IP}:10151"]}
    values = _tls_values("NoClientCert", webhookAuth={"bearerToken": "x"})
    values["config"] = {"remediation": {"enabled": True, "relay": relay}}
    notes = _notes(values)
    assert "url_template is not https://" in notes
    assert f"https://{RELEASE}-docker-image-exporter.{NAMESPACE}.svc:10151/webhook/alertmanager" in notes
    relay["url_template"] = "https://{host}/webhook/alertmanager"
    assert "url_template is not https://" not in _notes(values)
    assert "url_template is not https://" not in _notes(scenario_values("tls"))


def test_webhook_credentials_reach_the_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["remediation"]
    secret = one(objects, "Secret")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "bearer-token": "ci-bearer-token",
        "basic-auth-password": "ci-basic-password",
    }
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["webhook-auth"]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert {i["key"]: i["path"] for i in volume["items"]} == {
        "bearer-token": "bearer-token",
        "basic-auth-password": "basic-auth-password",
    }
    config = _config(objects)
    assert config["remediation"]["auth"] == {
        "bearer_token_file": f"{SECRET_DIR}/bearer-token",
        "basic_auth": {"username": "alertmanager", "password_file": f"{SECRET_DIR}/basic-auth-password"},
    }
    # no credential ever lands in the ConfigMap
    assert "ci-bearer-token" not in json.dumps(by_kind(objects, "ConfigMap"))
    # existingSecret: nothing created, the named key is mounted
    all_objects = rendered["all"]
    assert by_kind(all_objects, "Secret") == []
    pod = one(all_objects, "DaemonSet")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["webhook-auth"]["secret"]
    assert volume["secretName"] == "docker-image-exporter-webhook"
    assert volume["items"] == [{"key": "token", "path": "bearer-token"}]
    # remediation off: no credentials mounted even if given
    default = render({"webhookAuth": {"bearerToken": "unused"}})
    assert by_kind(default, "Secret") == []
    assert "webhook-auth" not in {m["name"] for m in exporter_container(default)["volumeMounts"]}


# --------------------------------------------------------------------------------------------- assets


def test_dashboards_equal_the_source(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sources = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))}
    assert sources, "dashboards/*.json is empty: the chart would ship no dashboards"
    found: dict[str, Any] = {}
    for cm in by_kind(rendered["all"], "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1":
            assert cm["metadata"]["annotations"] == {"grafana_folder": "Docker"}
            assert cm["metadata"]["namespace"] == "monitoring"
            for key, text in cm["data"].items():
                found[key] = json.loads(text)
    assert found == sources


def _prometheus_rule(objects: list[dict[str, Any]]) -> dict[str, Any]:
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for r in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(r)
    return rule


def _scaled_thresholds() -> dict[str, Any]:
    """Every threshold changed: ratios x0.9, integers x3 (+1), durations and strings replaced."""
    out: dict[str, Any] = {}
    for key, value in DEFAULT_THRESHOLDS.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[key] = value * 3 + 1
        elif isinstance(value, float):
            out[key] = round(value * 0.9, 6)
        elif key == "exporter_job_regex":
            out[key] = "my-exporter|docker-image-exporter"
        else:
            out[key] = "17m"
    return out


@pytest.mark.parametrize("case", ["defaults", "all-values", "every-threshold-changed"])
def test_prometheus_rule_equals_the_alerts_source(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    if case == "all-values":
        objects = rendered["all"]
        thresholds = scenario_values("all")["prometheusRule"]["thresholds"]
    else:
        thresholds = {} if case == "defaults" else _scaled_thresholds()
        objects = render({"prometheusRule": {"enabled": True, "thresholds": thresholds}})
    rule = _prometheus_rule(objects)
    assert rule["spec"]["groups"] == render_rules(thresholds)["groups"]


def test_chart_assets_have_not_drifted_from_the_sources() -> None:
    problems = _sync_module().drift()
    assert problems == [], "run `python scripts/sync-helm-assets.py`:\n" + "\n".join(problems)


def test_drift_check_notices_a_changed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift test is only worth something if a stale copy makes it fail."""
    sync = _sync_module()
    files = sync.expected_files()
    fake_chart = tmp_path / "files"
    for path, content in files.items():
        target = tmp_path / path.relative_to(sync.CHART)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    monkeypatch.setattr(sync, "VALUES_SCHEMA", tmp_path / "values.schema.json")
    monkeypatch.setattr(sync, "RULES_DST", fake_chart / "alerts" / "rules.yaml")
    monkeypatch.setattr(sync, "DEFAULTS_DST", fake_chart / "alerts" / "default-thresholds.yaml")
    monkeypatch.setattr(sync, "DASHBOARDS_DST", fake_chart / "dashboards")
    monkeypatch.setattr(sync, "FILES", fake_chart)
    monkeypatch.setattr(sync, "ROOT", tmp_path)
    assert sync.drift() == []
    rules = fake_chart / "alerts" / "rules.yaml"
    rules.write_text(rules.read_text().replace("for: '@@str:disk_for@@'", "for: 5m", 1))
    stale = fake_chart / "dashboards" / "removed-upstream.json"
    stale.write_text("{}")
    schema = tmp_path / "values.schema.json"
    schema.write_text(schema.read_text().replace('"disk_usage_interval"', '"x"', 1))
    problems = sync.drift()
    assert any("rules.yaml" in p for p in problems) and any("removed-upstream.json" in p for p in problems)
    assert any("values.schema.json" in p for p in problems)


def _walk(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, str):
        yield obj


def test_no_placeholder_survives_rendering(rendered: dict[str, list[dict[str, Any]]]) -> None:
    leftovers = [s for s in _walk(rendered["all"]) if "@@" in s]
    assert leftovers == []


def test_notes_explain_the_socket_group_and_pod_security() -> None:
    notes = _notes({"docker": {"socketGroup": 998}, "namespaceOverride": "die-system"})
    assert "supplemental group 998 (docker.socketGroup)" in notes
    assert "kubectl label namespace die-system pod-security.kubernetes.io/enforce=privileged" in notes
    assert "runs as ROOT" in _notes({"docker": {"runAsRoot": True}})
