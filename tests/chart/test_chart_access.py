"""From the chart's voiceDefaults to a voice's pods: the keys and TLS Secrets, the security
settings and the NetworkPolicy reach what the operator renders, and the values schema checks
them exactly as the CRD does."""

from __future__ import annotations

import json

import kubernetes_validate
from chart_testkit import ALL_ON, CHART, KUBERNETES_VERSION, VOICES, operator_env, values_schema_of, with_values

from orpheus_operator.crd import spec_schema
from orpheus_operator.labels import GRPC_PORT, HTTP_PORT, METRICS_PORT
from orpheus_operator.plan import render
from orpheus_operator.settings import OperatorSettings


def rendered_for_chart_voice(values: dict, voice: dict) -> dict[str, dict]:
    """What the operator, configured by the chart's environment, renders for a voice of `voices`."""
    settings = OperatorSettings.from_env(operator_env(values))
    body = {"apiVersion": "tts.orpheus.io/v1alpha1", "kind": "OrpheusVoice",
            "metadata": {"name": voice["name"], "namespace": voice.get("namespace", "voices")}, "spec": voice["spec"]}
    return {o["kind"]: o for o in render(body, settings)}


def test_values_schema_checks_voice_defaults_as_the_crd_checks_a_voice():
    values_schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["voiceDefaults"]["properties"]
    crd = spec_schema()["properties"]
    for key in ("security", "networkPolicy", "adapterSlots"):
        assert values_schema[key] == values_schema_of(crd[key]), (
            f"values.schema.json's voiceDefaults.{key} differs from crd.py's: write "
            f"chart_testkit.values_schema_of(spec_schema()['properties'][{key!r}]) there")


def test_network_policy_from_the_chart_admits_its_gateway_and_prometheus_to_their_ports():
    objects = rendered_for_chart_voice(ALL_ON, VOICES[1])
    policy = objects["NetworkPolicy"]
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    assert policy["spec"]["podSelector"] == objects["Deployment"]["spec"]["selector"]
    api, metrics = policy["spec"]["ingress"]
    assert api["from"] == ALL_ON["voiceDefaults"]["networkPolicy"]["clients"]
    # The chart's default scrapers stay under a voiceDefaults.networkPolicy that names only clients.
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    service_ports = {p["name"]: p["port"] for p in objects["Service"]["spec"]["ports"]}
    assert [p["port"] for p in api["ports"]] == [service_ports["grpc"], service_ports["http"]] == [GRPC_PORT, HTTP_PORT]
    assert [p["port"] for p in metrics["ports"]] == [service_ports["metrics"]] == [METRICS_PORT]
    assert "NetworkPolicy" not in rendered_for_chart_voice(None, VOICES[1])  # off by default


def test_key_and_tls_secrets_from_the_chart_reach_the_voice_pods():
    pod = rendered_for_chart_voice(ALL_ON, VOICES[1])["Deployment"]["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"api-keys": "tts-api-keys", "tls": "tts-tls"}
    args = pod["containers"][0]["args"]
    assert "security.max_sessions_per_key=8" in args and "security.tls_client_ca_file=/etc/orpheus-tts/tls/ca.crt" in args
    assert "exec" in pod["containers"][0]["readinessProbe"]  # mutual TLS: the kubelet has no client certificate
    own_tls = with_values(ALL_ON, voices=[{**VOICES[1], "spec": {**VOICES[1]["spec"], "security": {
        "tls": {"secretName": "tara-tls"}}}}])
    pod = rendered_for_chart_voice(own_tls, own_tls["voices"][0])["Deployment"]["spec"]["template"]["spec"]
    assert {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        "api-keys": "tts-api-keys", "tls": "tara-tls"}  # the voice's tls replaces the default's, keys stay


def test_adapter_slots_from_the_chart_size_the_voice_pool_and_its_budget():
    """leo-long has two adapters: the chart's maxResident 4 is capped at two places, maxRank 32 stays."""
    def pool(values):
        objects = rendered_for_chart_voice(values, VOICES[1])
        deployment = objects["Deployment"]
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return [a for a in args if a.startswith(("adapters.max_resident=", "adapters.max_rank="))]
    assert pool(ALL_ON) == ["adapters.max_resident=2", "adapters.max_rank=32"]
    assert pool(None) == ["adapters.max_resident=2", "adapters.max_rank=64"]  # the server's defaults
    own = with_values(ALL_ON, voices=[{**VOICES[1], "spec": {**VOICES[1]["spec"], "adapterSlots": {"maxResident": 1}}}])
    assert rendered_for_chart_voice(own, own["voices"][0])["Deployment"]["spec"]["template"]["spec"]["containers"][0][
        "args"].count("adapters.max_resident=1") == 1
