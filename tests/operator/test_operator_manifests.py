"""Every manifest the builders make is valid Kubernetes (strict schemas) and says what it should."""

from __future__ import annotations

import copy

import kopf
import kubernetes_validate
import pytest
from operator_testkit import load_example

from orpheus_operator.engine_job import build_args, engine_job
from orpheus_operator.settings import DEFAULT_BUILDER_IMAGE, DEFAULT_IMAGE
from orpheus_operator.hashing import engine_hash, engine_identity
from orpheus_operator.metrics import (ACTIVE_SESSIONS_METRIC, HPA_METRICS, PROMETHEUS_ADAPTER_RULES, SATURATION_METRIC,
                                      TTFB_P95_METRIC)
from orpheus_operator.crd import crd_manifest
from orpheus_operator.plan import render
from orpheus_operator.serving import (EXPECTED_STARTUP_S, deployment, horizontal_pod_autoscaler, server_args,
                                      serving_objects)
from orpheus_operator.voice import Voice

# The oldest Kubernetes we claim: gRPC probes (GA 1.27) and preStop sleep (beta, on by default, 1.30).
KUBERNETES_VERSION = "1.31"


def _voice(example: str = "voice-rtx4090-conversational.yaml", **spec) -> dict:
    body = load_example(example)
    body["metadata"].update(namespace="voices", uid="5f0c0d9e-0000-4000-8000-000000000001")
    body["spec"].update(spec)
    return body


VARIANTS = {
    "rtx-4090 conversational": _voice(),
    "h100 long-form on a PVC": _voice("voice-h100-longform.yaml"),
    "autoscaling off": _voice(autoscaling={"enabled": False}, replicas=3),
    "tensorrt-llm build on the GPU": _voice(backend="tensorrt-llm"),
    "model and codec on PVCs": _voice(model={"pvc": {"claimName": "models", "path": "orpheus"}},
                                      codec={"pvc": {"claimName": "models", "path": "snac_24khz"}}),
    "keys, mutual TLS, limits, NetworkPolicy": _voice(
        security={"apiKeys": {"secretName": "keys"}, "tls": {"secretName": "tls", "clientAuth": True},
                  "limits": {"maxSessionsPerKey": 4}, "allowedOrigins": ["https://app.example.com"]},
        networkPolicy={"enabled": True, "clients": [{"namespaceSelector": {"matchLabels": {"team": "gw"}}}],
                       "metricsScrapers": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}]}),
    "TLS": _voice(security={"tls": {"secretName": "tls"}}),
}


def all_manifests(body: dict) -> list[dict]:
    """What `render` prints, plus the same objects adopted by the voice as the operator makes them."""
    rendered = render(body)
    adopted = copy.deepcopy(rendered)
    for obj in adopted:
        kopf.adopt(obj, owner=body, strict=True)
    return rendered + adopted + [crd_manifest()]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_passes_strict_kubernetes_validation(variant):
    for obj in all_manifests(VARIANTS[variant]):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_does_catch_a_misspelt_field():
    obj = render(VARIANTS["rtx-4090 conversational"])[1]
    obj["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_render_lists_the_build_job_then_the_serving_objects():
    kinds = [o["kind"] for o in render(VARIANTS["rtx-4090 conversational"])]
    assert kinds == ["Job", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert "HorizontalPodAutoscaler" not in [o["kind"] for o in render(VARIANTS["autoscaling off"])]


def test_deployment_gets_one_gpu_on_the_right_nodes_and_the_engine_read_only():
    voice = Voice.from_body(VARIANTS["h100 long-form on a PVC"])
    digest = engine_hash(voice)
    pod = deployment(voice, digest, replicas=None)["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "node-pool": "h100"}
    assert {"key": "dedicated", "operator": "Equal", "value": "tts", "effect": "NoSchedule"} in pod["tolerations"]
    engine_mount = next(m for m in server["volumeMounts"] if m["name"] == "engine")
    assert engine_mount == {"name": "engine", "mountPath": "/engine", "subPath": digest, "readOnly": True}
    engine_volume = next(v for v in pod["volumes"] if v["name"] == "engine")
    assert engine_volume["persistentVolumeClaim"] == {"claimName": "orpheus-engine-cache", "readOnly": True}
    assert pod["terminationGracePeriodSeconds"] == 600
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 50051}
    assert server["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True


def test_replicas_are_left_to_the_hpa_after_creation():
    voice = Voice.from_body(VARIANTS["rtx-4090 conversational"])
    assert "replicas" not in deployment(voice, "h", replicas=None)["spec"]
    created = render(VARIANTS["rtx-4090 conversational"])[1]
    assert created["spec"]["replicas"] == voice.autoscaling.min_replicas
    fixed = Voice.from_body(VARIANTS["autoscaling off"])
    assert serving_objects(fixed, "h", replicas=fixed.replicas)[0]["spec"]["replicas"] == 3


def test_server_gets_the_session_budget_and_batch_size():
    args = server_args(Voice.from_body(VARIANTS["rtx-4090 conversational"]))
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == [
        "scheduler.max_concurrent_sessions=48",
        "scheduler.max_batch_size=32",
        "scheduler.max_context_tokens=2048",
        "model.quantization=fp8",
        "profile=conversational",
        "default_voice=tara",
    ]
    assert args[:3] == ["serve", "--engine", "/engine"]
    assert "--model" not in args and "--snac" not in args  # the engine directory replaces both


def _sets(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_build_job_gets_the_settings_the_pods_get_and_the_hash_covers_them(variant):
    """The engine is compiled for the buckets of these settings; a server refuses one built for others."""
    voice = Voice.from_body(VARIANTS[variant])
    built_for, served_with = _sets(build_args(voice, engine_hash(voice))), _sets(server_args(voice))
    assert built_for == {k: v for k, v in served_with.items() if k != "default_voice" and not k.startswith("security.")}
    assert {f"settings.{k}": v for k, v in built_for.items()}.items() <= engine_identity(voice).items()


def test_startup_probe_allows_three_times_the_expected_start_up():
    pod = deployment(Voice.from_body(VARIANTS["rtx-4090 conversational"]), "h", replicas=None)["spec"]["template"]["spec"]
    probe = pod["containers"][0]["startupProbe"]
    allowed_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert probe["periodSeconds"] == 5
    assert 3 * EXPECTED_STARTUP_S <= allowed_s < 3 * EXPECTED_STARTUP_S + probe["periodSeconds"]


def test_server_accepts_the_settings_the_operator_passes():
    """The --set keys are real server config keys (the server's loader rejects unknown ones)."""
    config = pytest.importorskip("orpheus_tts.config")
    args = server_args(Voice.from_body(VARIANTS["h100 long-form on a PVC"]))
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    loaded = config.load_config(overrides=config.parse_set_flags(sets), environ={})
    assert loaded.scheduler.max_concurrent_sessions == 48
    assert loaded.scheduler.max_context_tokens == 8192
    assert loaded.profile == "longform" and loaded.default_voice == "leo"
    assert loaded.model.quantization == "none"  # bf16, as budgeted


def test_hpa_scales_on_ttfb_p95_active_sessions_and_saturation_per_pod():
    voice = Voice.from_body(VARIANTS["rtx-4090 conversational"])
    metrics = horizontal_pod_autoscaler(voice, "h")["spec"]["metrics"]
    assert [(m["type"], m["pods"]["metric"]["name"], m["pods"]["target"]) for m in metrics] == [
        ("Pods", TTFB_P95_METRIC, {"type": "AverageValue", "averageValue": "150m"}),  # 150 ms, as a quantity of seconds
        ("Pods", ACTIVE_SESSIONS_METRIC, {"type": "AverageValue", "averageValue": "36"}),
        ("Pods", SATURATION_METRIC, {"type": "AverageValue", "averageValue": "800m"}),  # the CRD default, 0.8
    ]
    assert HPA_METRICS == {"ttfbP95": "orpheus_tts_ttfb_p95_seconds", "activeSessions": "orpheus_tts_active_sessions",
                           "saturation": "orpheus_tts_saturation"}
    assert {rule["name"]["as"] for rule in PROMETHEUS_ADAPTER_RULES} == set(HPA_METRICS.values())


@pytest.mark.parametrize("target, quantity", [(0.65, "650m"), (0.125, "125m"), (0.9995, "1"), (1, "1"), (0.0001, "1m")])
def test_hpa_saturation_target_is_the_voices_as_a_quantity_in_thousandths(target, quantity):
    body = _voice(autoscaling={"targetSaturation": target})
    hpa = horizontal_pod_autoscaler(Voice.from_body(body), "h")
    (saturation,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["pods"]["metric"]["name"] == SATURATION_METRIC]
    assert saturation["target"] == {"type": "AverageValue", "averageValue": quantity}
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_build_job_mounts_the_cache_and_sources_and_runs_the_builder():
    voice = Voice.from_body(VARIANTS["model and codec on PVCs"])
    digest = engine_hash(voice)
    job = engine_job(voice, digest)
    pod = job["spec"]["template"]["spec"]
    build = pod["containers"][0]
    assert job["metadata"]["name"] == f"orpheus-engine-{digest}"
    assert build["command"] == ["python", "-m", "engine_jobs.build"]
    # The builder image (server plus compiler), not the server image the pods run.
    assert (build["image"], build["imagePullPolicy"]) == (DEFAULT_BUILDER_IMAGE, "IfNotPresent")
    assert deployment(voice, digest, replicas=None)["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_IMAGE
    assert build["args"][:4] == ["--model-source", "pvc:/sources/source-0/orpheus", "--snac-source", "pvc:/sources/source-0/snac_24khz"]
    assert build["args"][-2:] == ["--output", f"/cache/{digest}"]
    assert build["args"][build["args"].index("--compile") + 1] == "auto"
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v] == [
        "orpheus-engine-cache", "models",
    ]


@pytest.mark.parametrize("variant", ["model and codec on PVCs", "tensorrt-llm build on the GPU"])
def test_build_job_compiles_on_a_gpu_of_the_voices_profile_for_every_backend(variant):
    voice = Voice.from_body(VARIANTS[variant])
    pod = engine_job(voice, engine_hash(voice))["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] == "16Gi" and resources["limits"]["memory"] == "32Gi"
    serving = deployment(voice, "h", replicas=None)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == serving["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090"}
    assert pod["tolerations"] == serving["tolerations"]
