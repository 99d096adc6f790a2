"""The chart lints strictly, renders valid objects with the defaults and with every flag on, and
its values schema turns typos into install errors. Helm here is Helm's Go SDK (helm-python-sdk)."""

from __future__ import annotations

import json

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_testkit import (ALL_ON, CHART, CRDS, KUBERNETES_VERSION, NAMESPACE, by_kind, closed, crd_schema,
                           operator_env, render, render_objects, with_values)

from orpheus_operator.crd import voice_schema
from orpheus_operator.labels import METRICS_PORT, selector_labels
from orpheus_operator.metrics import PROMETHEUS_ADAPTER_RULES, SATURATION_METRIC
from orpheus_operator.settings import ENV_PREFIX, OperatorSettings

POD_MONITOR = with_values(ALL_ON, **{"metrics.monitor.kind": "PodMonitor"})
DEMAND_QUERY = 'sum(rate(gateway_requests_total{namespace="{{ .namespace }}",service="{{ .voice }}"}[1m]))'
SCALE_TO_ZERO = with_values(ALL_ON, **{"keda.minReplicaCount": 0, "keda.demandQuery": DEMAND_QUERY,
                                       "keda.activationThreshold": "0.2", "keda.demandThreshold": "4"})
VARIANTS = {"defaults": None, "all-on": ALL_ON, "all-on-podmonitor": POD_MONITOR, "scale-to-zero": SCALE_TO_ZERO}
CUSTOM_CRDS = {
    "ServiceMonitor": CRDS / "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": CRDS / "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": CRDS / "monitoring.coreos.com_prometheusrules.yaml",
    "ScaledObject": CRDS / "keda.sh_scaledobjects.yaml",
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request) -> list[dict]:
    return render_objects(VARIANTS[request.param])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chart_lints_strictly_for_kubernetes_1_31(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1 and not problems, problems


def test_every_built_in_object_passes_strict_kubernetes_validation(rendered):
    built_in = [o for o in rendered if o["kind"] not in (*CUSTOM_CRDS, "OrpheusVoice")]
    assert built_in
    for obj in built_in:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_custom_objects_match_their_published_crd_schemas(rendered):
    for kind, crd_file in CUSTOM_CRDS.items():
        validator = jsonschema.Draft7Validator(closed(crd_schema(crd_file)))
        for obj in by_kind(rendered, kind):
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
            assert not errors, f"{kind} {obj['metadata']['name']}: {errors}"


def test_all_on_renders_every_kind_of_object():
    kinds = {o["kind"] for o in render_objects(ALL_ON)}
    assert {"ServiceMonitor", "PrometheusRule", "ScaledObject", "OrpheusVoice", "PersistentVolumeClaim", "ConfigMap",
            "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment"} <= kinds
    assert {"PodMonitor"} <= {o["kind"] for o in render_objects(POD_MONITOR)}


def test_defaults_render_only_the_operator():
    kinds = sorted(o["kind"] for o in render_objects())
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]


def test_chart_crd_passes_strict_kubernetes_validation():
    """The chart installs its crds/ copy (generated from crd.py; the drift test keeps it equal)."""
    chart_crd = yaml.safe_load((CHART / "crds" / "orpheusvoices.yaml").read_text())
    kubernetes_validate.validate(chart_crd, KUBERNETES_VERSION, strict=True)


def test_voices_from_values_pass_the_voice_schema():
    voices = by_kind(render_objects(with_values(ALL_ON, **{"keda.enabled": False})), "OrpheusVoice")
    assert [(v["metadata"]["namespace"], v["metadata"]["name"]) for v in voices] == [("voices", "tara-chat"), (NAMESPACE, "leo-long")]
    validator = jsonschema.Draft4Validator(closed(voice_schema()))  # OpenAPI v3.0: draft 4's exclusiveMinimum
    for voice in voices:
        assert not list(validator.iter_errors(voice)), voice
    assert voices[0]["spec"]["autoscaling"]["targetTtfbP95Ms"] == 150
    assert "enabled" not in voices[0]["spec"]["autoscaling"]  # the CRD's default (true) applies


def test_keda_scales_each_voice_through_its_scale_subresource_and_turns_off_its_hpa():
    objects = render_objects(ALL_ON)
    voices = {v["metadata"]["name"]: v for v in by_kind(objects, "OrpheusVoice")}
    scaled = {s["metadata"]["name"]: s for s in by_kind(objects, "ScaledObject")}
    assert set(scaled) == set(voices) == {"tara-chat", "leo-long"}
    for name, voice in voices.items():
        assert voice["spec"]["autoscaling"]["enabled"] is False
        assert scaled[name]["spec"]["scaleTargetRef"] == {"apiVersion": "tts.orpheus.io/v1alpha1", "kind": "OrpheusVoice", "name": name}
    tara = scaled["tara-chat"]["spec"]
    assert (tara["minReplicaCount"], tara["maxReplicaCount"]) == (1, 6)
    thresholds = {t["name"]: (t["metricType"], t["metadata"]["threshold"]) for t in tara["triggers"]}
    assert thresholds == {"ttfb-p95": ("Value", "0.15"), "active-sessions": ("AverageValue", "36"),
                          "saturation": ("AverageValue", "0.75")}
    leo = {t["name"]: t["metadata"]["threshold"] for t in scaled["leo-long"]["spec"]["triggers"]}
    # The CRD defaults: 250 ms, 3/4 of 16 sessions, saturation 0.8.
    assert leo == {"ttfb-p95": "0.25", "active-sessions": "12", "saturation": "0.8"}


def test_keda_saturation_trigger_sums_the_voices_pods_for_its_average_value_target():
    """KEDA's HPA divides an AverageValue trigger's one value by the target itself: the sum over the
    voice's pods gives ceil(sum / target) pods, as the operator's HPA on the per-pod metric."""
    for obj in by_kind(render_objects(ALL_ON), "ScaledObject"):
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        (trigger,) = [t for t in obj["spec"]["triggers"] if t["name"] == "saturation"]
        assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
        selector = f'job="orpheus-tts",namespace="{namespace}",voice="{name}"'
        assert trigger["metadata"]["query"] == f"sum(orpheus_tts_saturation{{{selector}}})"
        assert trigger["metadata"]["ignoreNullValues"] == "true"


def test_keda_scale_to_zero_wakes_voices_on_demand_seen_outside_their_pods():
    scaled = {s["metadata"]["name"]: s["spec"] for s in by_kind(render_objects(SCALE_TO_ZERO), "ScaledObject")}
    for name, namespace in (("tara-chat", "voices"), ("leo-long", NAMESPACE)):
        spec = scaled[name]
        assert spec["minReplicaCount"] == 0 and spec["cooldownPeriod"] == 300
        triggers = {t["name"]: t for t in spec["triggers"]}
        assert list(triggers) == ["ttfb-p95", "active-sessions", "saturation", "demand"]
        demand = triggers["demand"]
        assert demand["type"] == "prometheus" and demand["metricType"] == "AverageValue"
        assert demand["metadata"]["query"] == (
            f'sum(rate(gateway_requests_total{{namespace="{namespace}",service="{name}"}}[1m]))')
        assert {k: demand["metadata"][k] for k in ("threshold", "activationThreshold", "ignoreNullValues")} == {
            "threshold": "4", "activationThreshold": "0.2", "ignoreNullValues": "true"}
        # The server-metric triggers carry no activation threshold: at zero pods they see nothing.
        assert all("activationThreshold" not in triggers[t]["metadata"] for t in ("ttfb-p95", "active-sessions", "saturation"))
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]  # the CRD's CEL rule, not checked by jsonschema


def test_keda_keeps_one_pod_per_voice_by_default_and_adds_no_demand_trigger():
    with helm.Chart.load(CHART) as chart:
        assert chart.values["keda"]["minReplicaCount"] == 1 and chart.values["keda"]["demandQuery"] == ""
    for obj in by_kind(render_objects(ALL_ON), "ScaledObject"):
        assert obj["spec"]["minReplicaCount"] == 1
        assert [t["name"] for t in obj["spec"]["triggers"]] == ["ttfb-p95", "active-sessions", "saturation"]
    with_floor = with_values(ALL_ON, **{"keda.minReplicaCount": 2})
    floors = {o["metadata"]["name"]: o["spec"]["minReplicaCount"] for o in by_kind(render_objects(with_floor), "ScaledObject")}
    assert floors == {"tara-chat": 1, "leo-long": 2}  # a voice's own minReplicas wins over the chart's floor


def test_scale_to_zero_without_a_demand_query_fails_the_install():
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmRenderError, match="keda.minReplicaCount 0 needs keda.demandQuery"):
            chart.render(values=with_values(ALL_ON, **{"keda.minReplicaCount": 0}), name="orpheus", namespace=NAMESPACE)


def test_adapter_rules_are_the_operators_rules():
    (config_map,) = [c for c in by_kind(render_objects(ALL_ON), "ConfigMap") if "adapter" in c["metadata"]["name"]]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {"rules": PROMETHEUS_ADAPTER_RULES}
    (saturation,) = [r for r in PROMETHEUS_ADAPTER_RULES if r["name"]["as"] == SATURATION_METRIC]
    assert saturation["seriesQuery"] == 'orpheus_tts_saturation{namespace!="",pod!=""}'
    assert saturation["metricsQuery"] == "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"


def test_monitors_select_the_operators_voice_services_and_pods():
    for values in (ALL_ON, POD_MONITOR):
        (monitor,) = [o for o in render_objects(values) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert labels.items() <= {**selector_labels("any"), "app.kubernetes.io/managed-by": "orpheus-operator"}.items() | {
            ("app.kubernetes.io/instance", "any")}
        assert "app.kubernetes.io/instance" not in labels
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert endpoints[0]["port"] == "metrics" and METRICS_PORT == 9090
        targets = {r["targetLabel"]: r for r in endpoints[0]["relabelings"]}
        assert targets["job"]["replacement"] == "orpheus-tts"
        assert targets["voice"]["sourceLabels"] == ["__meta_kubernetes_pod_label_tts_orpheus_io_voice"]


def test_operator_runs_one_standalone_replica_with_restricted_security():
    (deployment,) = by_kind(render_objects(ALL_ON), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert "--peering" not in " ".join(container["args"])
    assert container["args"][:2] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    assert "--namespace=voices" in container["args"] and "--verbose" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "privileged": False, "capabilities": {"drop": ["ALL"]}}


def test_operator_settings_and_defaults_reach_its_environment():
    env = operator_env(ALL_ON)
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    parsed = OperatorSettings.from_env(settings)  # the operator's own reader accepts them
    assert parsed == OperatorSettings(engine_poll_s=15, status_interval_s=30, build_retry_base_s=30,
                                      build_retry_max_s=900, default_gpu_profile="l4",
                                      default_security=parsed.default_security,
                                      default_network_policy=parsed.default_network_policy,
                                      default_adapter_slots=parsed.default_adapter_slots)
    assert parsed.security_defaults == ALL_ON["voiceDefaults"]["security"]
    assert parsed.adapter_slots_defaults == ALL_ON["voiceDefaults"]["adapterSlots"]
    assert {ENV_PREFIX + f.upper() for f in OperatorSettings.__dataclass_fields__} <= settings.keys()
    assert settings[f"{ENV_PREFIX}DEFAULT_IMAGE"] == "orpheus-tts:0.1.0"
    assert settings[f"{ENV_PREFIX}DEFAULT_BUILDER_IMAGE"] == "orpheus-tts-builder:0.1.0"
    env_overridden = operator_env(with_values(ALL_ON, **{"voiceDefaults.builderImage": "registry.example/b:2"}))
    assert OperatorSettings.from_env(env_overridden).default_builder_image == "registry.example/b:2"
    assert settings[f"{ENV_PREFIX}DEFAULT_GPU_PROFILE"] == "l4"
    assert settings[f"{ENV_PREFIX}ENGINE_CACHE_STORAGE_CLASS"] == "fast"
    assert settings[f"{ENV_PREFIX}ENGINE_CACHE_SIZE"] == "100Gi"
    assert env["EXTRA"] == "1"


def test_engine_cache_claims_are_created_where_asked_and_kept_on_uninstall():
    claims = by_kind(render_objects(ALL_ON), "PersistentVolumeClaim")
    assert sorted(c["metadata"]["namespace"] for c in claims) == sorted(["voices", NAMESPACE])
    for claim in claims:
        assert claim["metadata"]["name"] == "orpheus-engine-cache"
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                                 "resources": {"requests": {"storage": "100Gi"}}}


def test_every_object_carries_the_standard_labels(rendered):
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, (obj["kind"], obj["metadata"]["name"], key)


def test_notes_tell_the_user_what_to_do_next():
    notes = render(ALL_ON)["orpheus-tts/templates/NOTES.txt"]
    assert "rollout status deployment/orpheus-orpheus-tts-operator" in notes
    assert "voices/tara-chat" in notes and "scaledobjects" in notes
    defaults = render()["orpheus-tts/templates/NOTES.txt"]
    assert "neither prometheusAdapter.rules.enabled nor keda.enabled" in defaults
    assert "clients must retry" not in notes
    assert "clients must retry with backoff" in render(SCALE_TO_ZERO)["orpheus-tts/templates/NOTES.txt"]
    assert "API key Secret \"tts-api-keys\"" in notes and "Every voice gets a NetworkPolicy" in notes
    closed = render(with_values(ALL_ON, **{"voiceDefaults.networkPolicy.clients": []}))["orpheus-tts/templates/NOTES.txt"]
    assert "nothing can reach the voices' gRPC and HTTP ports" in closed and "nothing can reach" not in notes
    assert "NetworkPolicy" not in defaults and "API key" not in defaults


@pytest.mark.parametrize("bad, where", [
    ({"operator": {"watchNamespace": ["voices"]}}, "watchNamespace"),            # misspelled key
    ({"prometheusRule": {"enabeld": True}}, "enabeld"),                         # misspelled key
    ({"metrics": {"monitor": {"kind": "Servicemonitor"}}}, "kind"),              # not one of the kinds
    ({"prometheusRule": {"alerts": {"errorRatio": {"threshold": "5%"}}}}, "threshold"),  # mistyped
    ({"operator": {"settings": {"enginePollSeconds": "fast"}}}, "enginePollSeconds"),
    ({"engineCache": {"size": "fifty gigs"}}, "size"),
    ({"voiceDefaults": {"builderImage": ""}}, "builderImage"),                  # empty: no image to run
    ({"voiceDefaults": {"security": {"apiKeys": {"secretname": "keys"}}}}, "secretname"),
    ({"voiceDefaults": {"security": {"limits": {"requestsPerSecondPerKey": 0}}}}, "requestsPerSecondPerKey"),
    ({"voiceDefaults": {"networkPolicy": {"clients": [{}]}}}, "clients"),       # a peer naming nothing
    ({"voiceDefaults": {"networkPolicy": {"enabled": "yes"}}}, "enabled"),
    ({"voiceDefaults": {"adapterSlots": {"maxRank": 0}}}, "maxRank"),
    ({"voiceDefaults": {"adapterSlots": {"maxresident": 4}}}, "maxresident"),
    ({"keda": {"enabled": "yes"}}, "enabled"),
    ({"keda": {"minReplicaCount": -1}}, "minReplicaCount"),
    ({"keda": {"activationThreshold": 0.5}}, "activationThreshold"),          # KEDA's metadata are strings
    ({"keda": {"demandThreshold": "ten"}}, "demandThreshold"),
    ({"voices": [{"name": "Tara", "spec": {"model": {}, "gpuProfile": "l4"}}]}, "name"),
    ({"prometheusRule": {"alerts": {"voiceNotReady": {"for": "30 minutes"}}}}, "for"),
    ({"prometheusRule": {"alerts": {"voiceOverCapacity": {"threshold": 0}}}}, "threshold"),
    ({"prometheusRule": {"alerts": {"voiceOverCapacity": {"threshold": "100%"}}}}, "threshold"),
    ({"prometheusRule": {"alerts": {"requestsRefused": {"severity": "urgent"}}}}, "severity"),
    ({"prometheusRule": {"alerts": {"requestsRefused": {"window": "5m"}}}}, "window"),  # not one of its keys
])
def test_values_schema_rejects_misspelled_and_mistyped_values(bad, where):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.validate_schema(bad)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values=bad, name="orpheus", namespace=NAMESPACE)


def test_a_voice_may_leave_its_gpu_profile_to_the_chart_default_but_not_with_none_set():
    voice = {"name": "tara", "spec": {"model": {"hub": {"repo": "canopylabs/orpheus-3b-0.1-ft"}}}}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({"voices": [voice], "voiceDefaults": {"gpuProfile": "l4"}})
        with pytest.raises(helm.HelmValuesError, match="gpuProfile"):
            chart.validate_schema({"voices": [voice]})  # voiceDefaults.gpuProfile is "" by default


def test_values_schema_accepts_the_defaults_and_every_flag_on():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(None)
        chart.validate_schema(ALL_ON)
        defaults = chart.values
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(defaults) <= set(schema["properties"])
