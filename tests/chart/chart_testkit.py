"""Test kit for the Helm chart tests: render through Helm's Go SDK, schemas, and the binaries.

`helm-python-sdk` binds Helm v4's Go SDK (libhelm_c), so rendering and linting here are Helm's
own, without a helm binary or a cluster. `promtool` and `prometheus` come from Debian's
`prometheus` package; tests that need them fail (never skip) when they are missing.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "orpheus-tts"
CRDS = Path(__file__).resolve().parent / "crds"  # published third-party CRDs, see crds/README.md
KUBERNETES_VERSION = "1.31"  # the same as the operator's manifest tests
RELEASE, NAMESPACE = "orpheus", "tts-system"

VOICES = [
    {
        "name": "tara-chat",
        "namespace": "voices",
        "labels": {"team": "speech"},
        "spec": {
            "model": {"hub": {"repo": "canopylabs/orpheus-3b-0.1-ft", "revision": "main"}},
            "gpuProfile": "rtx-4090",
            "precision": "fp8",
            "sessionsPerPod": 48,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 6, "targetTtfbP95Ms": 150, "targetActiveSessionsPerPod": 36,
                            "targetSaturation": 0.75},
        },
    },
    {"name": "leo-long", "spec": {"model": {"pvc": {"claimName": "models", "path": "orpheus-3b"}}, "gpuProfile": "h100-80gb",
                                  "adapters": [
                                      {"name": "leo-warm", "pvc": {"claimName": "adapters", "path": "leo/warm"},
                                       "voices": ["leo-warm"]},
                                      {"name": "narrator", "hub": {"repo": "acme/orpheus-narrator-lora", "revision": "4f2c"}},
                                  ]}},
]

# Every flag on (the monitor kind is switched separately: ServiceMonitor or PodMonitor).
ALL_ON: dict[str, Any] = {
    "commonLabels": {"env": "test"},
    "operator": {"watchNamespaces": ["voices", NAMESPACE], "verbose": True, "imagePullSecrets": [{"name": "regcred"}],
                 "podAnnotations": {"a": "b"}, "extraEnv": [{"name": "EXTRA", "value": "1"}],
                 "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}], "priorityClassName": "high"},
    "serviceAccount": {"annotations": {"iam": "role"}},
    "voiceDefaults": {
        "gpuProfile": "l4",
        "security": {"apiKeys": {"secretName": "tts-api-keys"}, "tls": {"secretName": "tts-tls", "clientAuth": True},
                     "limits": {"maxSessionsPerKey": 8, "requestsPerSecondPerKey": 5}},
        "networkPolicy": {"enabled": True,
                          "clients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
                                       "podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}]},
        "adapterSlots": {"maxResident": 4, "maxRank": 32},
    },
    "engineCache": {"create": True, "namespaces": ["voices", NAMESPACE], "storageClassName": "fast", "size": "100Gi",
                    "accessModes": ["ReadWriteMany"]},
    "voices": VOICES,
    "metrics": {"monitor": {"enabled": True, "kind": "ServiceMonitor", "namespaces": ["voices"], "labels": {"release": "kps"}}},
    "prometheusAdapter": {"rules": {"enabled": True, "namespace": "monitoring"}},
    "keda": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "alertLabels": {"team": "speech"},
                       "runbookBaseUrl": "https://example.org/orpheus-tts/runbook"},
    "kubeStateMetrics": {"customResourceState": {"enabled": True, "namespace": "monitoring",
                                                 "serviceAccountName": "kube-state-metrics"}},
}


def with_values(base: dict, **changes: Any) -> dict:
    """A deep copy of `base` with dotted keys set: with_values(ALL_ON, **{"metrics.monitor.kind": "PodMonitor"})."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = out
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print it (NOTES.txt included)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render_objects(values: dict | None = None) -> list[dict]:
    """Every Kubernetes object the chart renders, without the CRDs under crds/."""
    objects = []
    for path, text in sorted(render(values).items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def granted(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """RBAC rules as {(API group, resource): verbs}."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def operator_env(values: dict | None = None) -> dict[str, str | None]:
    """The operator container's environment as the chart renders it, by name."""
    (deployment,) = [d for d in by_kind(render_objects(values), "Deployment")
                     if d["metadata"]["name"].endswith("-operator")]
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def crd_schema(crd_file: Path) -> dict:
    """The served version's openAPIV3Schema of a CRD file."""
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served", True) and v.get("storage", True)]
    return version["schema"]["openAPIV3Schema"]


def closed(schema: Any) -> Any:
    """The schema with unknown fields rejected, as `kubectl apply --validate=strict` treats them.

    An object with declared properties, no additionalProperties and no
    x-kubernetes-preserve-unknown-fields gets additionalProperties: false (the API server
    would silently prune a misspelled field; the test should see it).
    """
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def require_binary(name: str) -> str:
    """The path of a Debian `prometheus` package binary; a clear failure when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"`{name}` not found on PATH: install Debian's prometheus package "
            "(apt-get install -y --no-install-recommends prometheus); CI installs it in .ci/run"
        )
    return path


def prometheus_rule_groups(values: dict | None = None) -> dict:
    """The PrometheusRule's spec as a plain Prometheus rules file ({"groups": [...]})."""
    (rule,) = by_kind(render_objects(values), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def values_schema_of(crd_schema_node: Any) -> Any:
    """A CRD schema fragment as the chart's values.schema.json (draft 7) holds it: unknown keys
    rejected (`closed`), no defaults or x-kubernetes-* keys, and OpenAPI v3.0's boolean
    exclusiveMinimum turned into draft 7's number."""
    if isinstance(crd_schema_node, list):
        return [values_schema_of(s) for s in crd_schema_node]
    if not isinstance(crd_schema_node, dict):
        return crd_schema_node
    out = {k: values_schema_of(v) for k, v in closed(crd_schema_node).items()
           if k != "default" and not k.startswith("x-kubernetes-")}
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    return out
