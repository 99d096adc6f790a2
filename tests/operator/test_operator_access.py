"""Who may reach a voice's pods: key and TLS Secrets mounted so rotation reaches them, the server's
security settings, probes that still work with TLS, and the NetworkPolicy's selectors and ports."""

from __future__ import annotations

import jsonschema
import pytest
from operator_testkit import voice_body

from orpheus_operator.crd import voice_schema
from orpheus_operator.hashing import engine_hash
from orpheus_operator.labels import GRPC_PORT, HTTP_PORT, METRICS_PORT
from orpheus_operator.plan import render
from orpheus_operator.serving import pod_template, server_args
from orpheus_operator.settings import OperatorSettings
from orpheus_operator.voice import Voice, refusal

GATEWAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
           "podSelector": {"matchLabels": {"app": "envoy"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
KEYS = {"apiKeys": {"secretName": "tts-api-keys"}}
TLS = {"tls": {"secretName": "tara-chat-tls"}}
MTLS = {"tls": {"secretName": "tara-chat-tls", "clientAuth": True}}
LIMITS = {"limits": {"maxSessionsPerKey": 4, "requestsPerSecondPerKey": 2.5, "burstPerKey": 10},
          "allowedOrigins": ["https://app.example.com", "https://admin.example.com"]}


def voice(settings: OperatorSettings | None = None, **spec) -> Voice:
    return Voice.from_body(voice_body(**spec), settings)


def pod(v: Voice) -> dict:
    return pod_template(v, engine_hash(v))["spec"]


def server_sets(v: Voice) -> dict[str, str]:
    args = server_args(v)
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


def security_sets(v: Voice) -> dict[str, str]:
    return {k: val for k, val in server_sets(v).items() if k.startswith("security.")}


def test_no_security_asked_for_changes_nothing():
    v = voice()
    assert security_sets(v) == {}
    assert {vol["name"] for vol in pod(v)["volumes"]} == {"engine", "tmp", "dshm"}


def test_api_keys_secret_is_mounted_as_a_directory_so_a_rotation_reaches_the_pod():
    v = voice(security={"apiKeys": {"secretName": "tts-api-keys", "key": "keys.txt"}})
    spec = pod(v)
    (volume,) = [vol for vol in spec["volumes"] if vol["name"] == "api-keys"]
    assert volume["secret"] == {"secretName": "tts-api-keys", "defaultMode": 0o440,
                                "items": [{"key": "keys.txt", "path": "api-keys"}]}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
    assert "subPath" not in mount and mount["readOnly"] is True  # a subPath mount never sees an update
    sets = security_sets(v)
    assert sets == {"security.api_keys_file": f"{mount['mountPath']}/api-keys", "security.open_probes": "true"}
    assert voice(security=KEYS).security.api_keys_key == "api-keys"  # the CRD's default key


def test_tls_mounts_the_secret_and_probes_over_https_which_the_kubelet_can_do():
    v = voice(security=TLS)
    spec = pod(v)
    (volume,) = [vol for vol in spec["volumes"] if vol["name"] == "tls"]
    assert volume["secret"] == {"secretName": "tara-chat-tls", "defaultMode": 0o440}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    assert "subPath" not in mount and mount["readOnly"] is True
    assert security_sets(v) == {"security.tls_cert_file": f"{mount['mountPath']}/tls.crt",
                                "security.tls_key_file": f"{mount['mountPath']}/tls.key"}
    server = spec["containers"][0]
    assert server["startupProbe"]["httpGet"] == server["readinessProbe"]["httpGet"] == {
        "path": "/readyz", "port": "http", "scheme": "HTTPS"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"} in server["ports"]
    plain = pod(voice())["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in server[probe] and plain[probe]["grpc"] == {"port": GRPC_PORT}
        assert {k: v for k, v in server[probe].items() if k != "httpGet"} == {
            k: v for k, v in plain[probe].items() if k != "grpc"}  # same timing as the gRPC probes


def test_mutual_tls_probes_run_the_health_command_with_the_pods_own_certificate():
    v = voice(security=MTLS)
    sets = security_sets(v)
    assert sets["security.tls_client_ca_file"] == "/etc/orpheus-tts/tls/ca.crt"
    server = pod(v)["containers"][0]
    command = ["orpheus-tts", "health", "--server", f"localhost:{GRPC_PORT}",
               "--tls-ca", "/etc/orpheus-tts/tls/ca.crt", "--tls-server-name", "tara-chat.voices.svc",
               "--tls-cert", "/etc/orpheus-tts/tls/tls.crt", "--tls-key", "/etc/orpheus-tts/tls/tls.key"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["exec"]["command"] == command
        assert server[probe]["timeoutSeconds"] >= 5  # a Python process starts for each
    named = voice(security={"tls": {**MTLS["tls"], "serverName": "tts.example.com"}})
    assert "tts.example.com" in pod(named)["containers"][0]["readinessProbe"]["exec"]["command"]


def test_per_key_limits_and_origins_reach_the_server():
    sets = security_sets(voice(security={**KEYS, **LIMITS}))
    assert {k: sets[k] for k in sets if k not in ("security.api_keys_file", "security.open_probes")} == {
        "security.max_sessions_per_key": "4",
        "security.requests_per_s_per_key": "2.5",
        "security.burst_per_key": "10",
        "security.allowed_origins": '["https://app.example.com", "https://admin.example.com"]',
    }


def test_server_accepts_the_security_settings_the_operator_passes():
    config = pytest.importorskip("orpheus_tts.config")
    if not hasattr(config, "SecurityConfig"):
        pytest.fail("the server's config has no security section yet")
    for security in ({**KEYS, **MTLS, **LIMITS}, {**KEYS, **TLS}):
        sets = [f"{k}={v}" for k, v in server_sets(voice(security=security)).items()]
        loaded = config.load_config(overrides=config.parse_set_flags(sets), environ={}).security
        assert loaded.api_keys_file == "/etc/orpheus-tts/keys/api-keys" and loaded.open_probes is True
        assert (loaded.tls_cert_file, loaded.tls_key_file) == ("/etc/orpheus-tts/tls/tls.crt", "/etc/orpheus-tts/tls/tls.key")
    assert loaded.tls_client_ca_file == ""
    full = config.load_config(overrides=config.parse_set_flags(
        [f"{k}={v}" for k, v in server_sets(voice(security={**KEYS, **MTLS, **LIMITS})).items()]), environ={}).security
    assert full.tls_client_ca_file == "/etc/orpheus-tts/tls/ca.crt"
    assert (full.max_sessions_per_key, full.requests_per_s_per_key, full.burst_per_key) == (4, 2.5, 10)
    assert full.allowed_origins == LIMITS["allowedOrigins"]


def test_security_changes_roll_the_pods_but_never_rebuild_the_engine():
    plain, secured = voice(), voice(security={**KEYS, **MTLS, **LIMITS})
    assert engine_hash(plain) == engine_hash(secured)
    assert pod(plain) != pod(secured)


def test_limits_without_keys_are_refused_rather_than_silently_ignored():
    refused = refusal(voice(security=LIMITS))
    assert refused is not None and refused.reason == "InvalidSpec" and "security.apiKeys" in refused.message
    assert refusal(voice(security={**KEYS, **LIMITS})) is None


def test_operator_defaults_lie_under_the_voice_and_each_key_it_sets_replaces_the_defaults():
    settings = OperatorSettings.from_env({
        "ORPHEUS_OPERATOR_DEFAULT_SECURITY": '{"apiKeys": {"secretName": "shared-keys"}, "limits": {"maxSessionsPerKey": 2}}',
        "ORPHEUS_OPERATOR_DEFAULT_NETWORK_POLICY": '{"enabled": true, "metricsScrapers": [{"podSelector": {}}]}',
    })
    inherited = voice(settings)
    assert inherited.security.api_keys_secret == "shared-keys" and inherited.security.max_sessions_per_key == 2
    assert inherited.network.enabled and inherited.network.metrics_scrapers == ({"podSelector": {}},)
    own = voice(settings, security={"apiKeys": {"secretName": ""}, **TLS}, networkPolicy={"enabled": False})
    assert own.security.api_keys_secret is None and own.security.tls_secret == "tara-chat-tls"
    assert own.security.max_sessions_per_key == 2 and not own.network.enabled
    assert refusal(own) is not None  # the default's limits now lack keys
    with pytest.raises(ValueError, match="DEFAULT_SECURITY must be a JSON object"):
        OperatorSettings.from_env({"ORPHEUS_OPERATOR_DEFAULT_SECURITY": "shared-keys"})


def test_network_policy_lets_only_the_gateway_reach_the_api_and_prometheus_the_metrics():
    body = voice_body(networkPolicy={"enabled": True, "clients": [GATEWAY], "metricsScrapers": [PROMETHEUS]})
    objects = {o["kind"]: o for o in render(body)}
    policy, deployment, service = objects["NetworkPolicy"], objects["Deployment"], objects["Service"]
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is left alone
    api, metrics = policy["spec"]["ingress"]
    container_ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert container_ports == service_ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "metrics": METRICS_PORT}
    assert api == {"from": [GATEWAY], "ports": [{"protocol": "TCP", "port": container_ports["grpc"]},
                                                {"protocol": "TCP", "port": container_ports["http"]}]}
    assert metrics == {"from": [PROMETHEUS], "ports": [{"protocol": "TCP", "port": container_ports["metrics"]}]}
    assert "NetworkPolicy" not in {o["kind"] for o in render(voice_body())}


def test_network_policy_with_no_clients_closes_the_api_ports_instead_of_opening_them():
    """An ingress rule with no `from` admits every source: an empty list must leave the rule out."""
    body = voice_body(networkPolicy={"enabled": True, "metricsScrapers": [PROMETHEUS]})
    (policy,) = [o for o in render(body) if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"] == [{"from": [PROMETHEUS], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}]
    (closed,) = [o for o in render(voice_body(networkPolicy={"enabled": True})) if o["kind"] == "NetworkPolicy"]
    assert closed["spec"]["ingress"] == []


def test_voice_schema_takes_keys_tls_limits_and_a_network_policy():
    for spec in ({"security": {**KEYS, **MTLS, **LIMITS}},
                 {"networkPolicy": {"enabled": True, "clients": [GATEWAY, {"namespaceSelector": {}}],
                                    "metricsScrapers": [PROMETHEUS]}}):
        jsonschema.Draft4Validator(voice_schema()).validate(voice_body(**spec))
