"""The serving objects of a voice: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget,
and the NetworkPolicy when the voice asks for one.

Pure functions: a `Voice` and its engine hash in, plain dicts out. Ownership (`kopf.adopt`) is
added by the handlers, which know the live object's uid.

Replicas: with autoscaling on, the HPA owns `spec.replicas` of the Deployment. The operator sets
it once, when it creates the Deployment, and leaves it out of every later update, so the two
never fight (`deployment(..., replicas=None)`).
"""

from __future__ import annotations

from .access import TLS_CA, TLS_CERT, TLS_KEY, TLS_MOUNT
from .engine_job import container_security_context, gpu_placement, pod_security_context
from .labels import ADAPTERS_ANNOTATION, GRPC_PORT, HTTP_PORT, METRICS_PORT, selector_labels, server_labels
from .lora_adapters import FETCH_COMMAND, FETCH_CONTAINER, FETCH_RESOURCES
from .metrics import ACTIVE_SESSIONS_METRIC, SATURATION_METRIC, TTFB_P95_METRIC
from .server_settings import serving_settings, set_flags
from .voice import Voice

ENGINE_MOUNT = "/engine"

# Seconds between SIGTERM and the server refusing new streams, so that endpoints are updated
# before it stops accepting; the rest of the grace period goes to finishing streams.
PRESTOP_SLEEP_S = 5

DEFAULT_SERVER_RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}

# Seconds from container start to serving, from a built engine (weights read, compiled artifacts
# loaded, CUDA graphs captured, warm-up done). Measured: see bench/results/h200-engine-startup/
# (H200, an engine for 256 sessions and batches of 256: 66 s to SERVING, of which decode and
# prefill graphs 27 s and codec graphs 19 s); updated when measured. The target is 30 s. The start-up probe allows
# STARTUP_ALLOWANCE times this, probing every STARTUP_PROBE_PERIOD_S, before liveness takes over.
EXPECTED_STARTUP_S = 66
STARTUP_ALLOWANCE = 3
STARTUP_PROBE_PERIOD_S = 5
EXEC_PROBE_TIMEOUT_S = 5


def server_args(voice: Voice) -> list[str]:
    """`orpheus-tts serve` flags: the engine directory plus the settings it was built for."""
    drain_s = max(1, voice.termination_grace_s - PRESTOP_SLEEP_S - 5)
    return [
        "serve",
        "--engine", ENGINE_MOUNT,
        "--device", "cuda",
        "--grpc-port", str(GRPC_PORT),
        "--http-port", str(HTTP_PORT),
        "--metrics-port", str(METRICS_PORT),
        "--grace-s", str(drain_s),
        *set_flags(serving_settings(voice)),
    ]


def _resources(voice: Voice) -> dict:
    requests = dict(voice.resources.get("requests") or DEFAULT_SERVER_RESOURCES["requests"])
    limits = dict(voice.resources.get("limits") or DEFAULT_SERVER_RESOURCES["limits"])
    requests["nvidia.com/gpu"] = 1
    limits["nvidia.com/gpu"] = 1
    return {"requests": requests, "limits": limits}


def health_check(voice: Voice, http_path: str) -> dict:
    """How the kubelet asks the server whether it is up (`http_path`: the HTTP probe's path).

    Plain text: the native gRPC probe. With TLS the kubelet's gRPC probe cannot connect, but its
    HTTPS probe can (it checks no certificate, so any name in tls.crt will do): /readyz, /healthz.
    With mutual TLS the kubelet has no client certificate to show, so the probe is a command in
    the container, `orpheus-tts health` over TLS, presenting tls.crt (signed by ca.crt as a client
    certificate would be) and checking the server's against ca.crt under the Service's DNS name.
    """
    security = voice.security
    if not security.tls:
        return {"grpc": {"port": GRPC_PORT}}
    if not security.mutual_tls:
        return {"httpGet": {"path": http_path, "port": "http", "scheme": "HTTPS"}}
    server_name = security.tls_server_name or f"{voice.name}.{voice.namespace}.svc"
    return {"exec": {"command": [
        "orpheus-tts", "health", "--server", f"localhost:{GRPC_PORT}",
        "--tls-ca", f"{TLS_MOUNT}/{TLS_CA}", "--tls-server-name", server_name,
        "--tls-cert", f"{TLS_MOUNT}/{TLS_CERT}", "--tls-key", f"{TLS_MOUNT}/{TLS_KEY}",
    ]}}


def _probe(voice: Voice, http_path: str, period_s: int, failure_threshold: int, timeout_s: int = 1) -> dict:
    check = health_check(voice, http_path)
    if "exec" in check:  # a Python process starts for each probe
        timeout_s = max(timeout_s, EXEC_PROBE_TIMEOUT_S)
    return {**check, "periodSeconds": period_s, "failureThreshold": failure_threshold, "timeoutSeconds": timeout_s}


def startup_probe(voice: Voice) -> dict:
    """Readiness every STARTUP_PROBE_PERIOD_S until serving, for about 3x the expected start-up."""
    failures = -(-EXPECTED_STARTUP_S * STARTUP_ALLOWANCE // STARTUP_PROBE_PERIOD_S)  # ceiling division
    return _probe(voice, "/readyz", period_s=STARTUP_PROBE_PERIOD_S, failure_threshold=failures)


def fetch_adapters_container(voice: Voice) -> dict:
    """The init container that downloads the voice's hub adapters (lora_adapters.py), in the server image."""
    return {
        "name": FETCH_CONTAINER,
        "image": voice.image,
        "imagePullPolicy": voice.image_pull_policy,
        "command": list(FETCH_COMMAND),
        "args": voice.adapters.fetch_args(),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": FETCH_RESOURCES,
        "securityContext": container_security_context(),
        # `kubectl describe pod` then shows why a fetch failed.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *voice.adapters.fetch_mounts()],
    }


def pod_template(voice: Voice, engine_hash: str) -> dict:
    container = {
        "name": "server",
        "image": voice.image,
        "imagePullPolicy": voice.image_pull_policy,
        "command": ["orpheus-tts"],
        "args": server_args(voice),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ],
        "resources": _resources(voice),
        "startupProbe": startup_probe(voice),
        "readinessProbe": _probe(voice, "/readyz", period_s=5, failure_threshold=2),
        "livenessProbe": _probe(voice, "/healthz", period_s=10, failure_threshold=6, timeout_s=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "engine", "mountPath": ENGINE_MOUNT, "subPath": engine_hash, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *voice.security.volume_mounts(),
            *voice.adapters.volume_mounts(),
        ],
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
    if voice.adapters.adapters:
        annotations[ADAPTERS_ANNOTATION] = voice.adapters.identities()
    spec: dict = {
        "terminationGracePeriodSeconds": voice.termination_grace_s,
        "securityContext": pod_security_context(),
        **gpu_placement(voice),
        "containers": [container],
        "volumes": [
            {"name": "engine", "persistentVolumeClaim": {"claimName": voice.cache_claim, "readOnly": True}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            *voice.security.volumes(),
            *voice.adapters.volumes(),
        ],
    }
    if voice.adapters.hub:
        spec["initContainers"] = [fetch_adapters_container(voice)]
    return {"metadata": {"labels": server_labels(voice.name, engine_hash), "annotations": annotations}, "spec": spec}


def deployment(voice: Voice, engine_hash: str, replicas: int | None) -> dict:
    """The GPU pods. `replicas=None` leaves the field out (the HPA owns it)."""
    spec: dict = {
        "selector": {"matchLabels": selector_labels(voice.name)},
        "revisionHistoryLimit": 5,
        # Never drop below the current capacity during a rollout; a new pod needs a free GPU.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": pod_template(voice, engine_hash),
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(voice, engine_hash),
        "spec": spec,
    }


def initial_replicas(voice: Voice) -> int:
    return voice.autoscaling.min_replicas if voice.autoscaling.enabled else voice.replicas


def managed_replicas(voice: Voice) -> int | None:
    """What updates set `spec.replicas` to: nothing under an HPA, else the voice's own count."""
    return None if voice.autoscaling.enabled else voice.replicas


def service(voice: Voice, engine_hash: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(voice, engine_hash),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(voice.name),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def milli_quantity(value: float) -> str:
    """A fraction as a Kubernetes quantity in thousandths, the precision the HPA compares at:
    0.8 -> "800m", 0.125 -> "125m", 1 -> "1". Never below "1m" (a zero target would divide by zero)."""
    milli = max(1, round(value * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def horizontal_pod_autoscaler(voice: Voice, engine_hash: str) -> dict:
    """autoscaling/v2 on three per-pod metrics (see `metrics.py` for where they come from).

    The HPA takes the largest replica count any of them asks for; saturation (demand over
    real-time capacity) against a target below 1 makes a voice grow before its pods queue.
    """
    scaling = voice.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(voice, engine_hash),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": voice.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": TTFB_P95_METRIC},
                        "target": {"type": "AverageValue", "averageValue": f"{scaling.target_ttfb_p95_ms}m"},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": ACTIVE_SESSIONS_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(scaling.target_active_sessions_per_pod)},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": SATURATION_METRIC},
                        "target": {"type": "AverageValue", "averageValue": milli_quantity(scaling.target_saturation)},
                    },
                },
            ],
            # A new pod may wait for a GPU node and an image pull, and streams last long: up fast, down slowly.
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def pod_disruption_budget(voice: Voice, engine_hash: str) -> dict:
    """At most one pod evicted at a time (node drains still go through with a single replica)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(voice, engine_hash),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(voice.name)}},
    }


def network_policy(voice: Voice, engine_hash: str) -> dict:
    """Ingress to the voice's pods: the clients to gRPC and HTTP, the scrapers to metrics; nothing else.

    A rule with no peers would admit everyone, so a list left empty leaves its rule out (and its
    ports closed). The kubelet's probes come from the node, which a NetworkPolicy always lets in.
    """
    rules = []
    for peers, ports in ((voice.network.clients, (GRPC_PORT, HTTP_PORT)), (voice.network.metrics_scrapers, (METRICS_PORT,))):
        if peers:
            rules.append({"from": [dict(p) for p in peers], "ports": [{"protocol": "TCP", "port": port} for port in ports]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(voice, engine_hash),
        "spec": {"podSelector": {"matchLabels": selector_labels(voice.name)}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def serving_objects(voice: Voice, engine_hash: str, replicas: int | None) -> list[dict]:
    """Everything that serves the voice, in the order they are applied (the NetworkPolicy first:
    no pod starts open that should be closed)."""
    objects = [network_policy(voice, engine_hash)] if voice.network.enabled else []
    objects += [deployment(voice, engine_hash, replicas), service(voice, engine_hash)]
    if voice.autoscaling.enabled:
        objects.append(horizontal_pod_autoscaler(voice, engine_hash))
    objects.append(pod_disruption_budget(voice, engine_hash))
    return objects


def unwanted_objects(voice: Voice, engine_hash: str) -> list[dict]:
    """The optional serving objects this voice has turned off (deleted if an earlier spec made them)."""
    unwanted = [] if voice.autoscaling.enabled else [horizontal_pod_autoscaler(voice, engine_hash)]
    return unwanted if voice.network.enabled else [*unwanted, network_policy(voice, engine_hash)]


def _metadata(voice: Voice, engine_hash: str) -> dict:
    labels = server_labels(voice.name, engine_hash)
    return {"name": voice.name, "namespace": voice.namespace, "labels": labels}

