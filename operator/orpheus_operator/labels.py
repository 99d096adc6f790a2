"""Names, labels and annotations shared by every object the operator makes."""

from __future__ import annotations

from .crd import GROUP

APP_NAME = "orpheus-tts"
MANAGED_BY = "orpheus-operator"
FIELD_MANAGER = "orpheus-operator"

VOICE_LABEL = f"{GROUP}/voice"
ENGINE_HASH_LABEL = f"{GROUP}/engine-hash"
ENGINE_IDENTITY_ANNOTATION = f"{GROUP}/engine-identity"
BUILD_ATTEMPT_ANNOTATION = f"{GROUP}/build-attempt"
# On the serving pods' template: the LoRA adapters it holds, read back for status.adapters.
ADAPTERS_ANNOTATION = f"{GROUP}/adapters"

# The server's ports; the Service exposes the same names.
GRPC_PORT = 50051
HTTP_PORT = 8000
METRICS_PORT = 9090

# Non-root user and group the pods run as (the image must not need root).
RUN_AS_USER = 10001


def engine_job_name(engine_hash: str) -> str:
    return f"orpheus-engine-{engine_hash}"


def selector_labels(voice_name: str) -> dict[str, str]:
    """The Deployment's selector: never changes for the life of a voice (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": voice_name,
        "app.kubernetes.io/component": "server",
    }


def server_labels(voice_name: str, engine_hash: str) -> dict[str, str]:
    return {
        **selector_labels(voice_name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        VOICE_LABEL: voice_name,
        ENGINE_HASH_LABEL: engine_hash,
    }


def engine_labels(engine_hash: str) -> dict[str, str]:
    """Build Jobs are shared between voices, so they carry no voice label."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": "engine-build",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        ENGINE_HASH_LABEL: engine_hash,
    }


def selector_string(labels: dict[str, str]) -> str:
    """`a=1,b=2`: the form of `status.selector` that the scale subresource wants."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
