"""The engine build Job: one per engine hash, writing `/cache/<hash>` on the cache PVC.

The Job runs `python -m engine_jobs.build` from the builder image (`spec.builderImage`: the
server image plus the C compiler Triton builds its launchers with while compiling; the engine
then carries them, so the server image needs none). It is named after the hash,
so voices sharing a model and slot budget share it and re-applying a voice finds it already
there. The serving pods mount `<hash>/` of the same PVC read-only as `/engine` and start with
`serve --engine /engine`.

It runs on a GPU node of the voice's profile for every backend: compiling the kernels and
capturing the CUDA graphs needs the target GPU. It passes `--compile auto`, so on such a node it
compiles (and a failed compile fails the Job, exit 5); without a usable GPU of that
architecture it writes the weights only and records the compile as pending, and the serving
pods then refuse the engine at start (`engine.on_mismatch=refuse`) with a message naming it.
`auto` rather than `required` keeps one Job spec for the cluster and the CPU end-to-end test.
It gets the same `--set` settings as the pods (`server_settings.engine_settings`), so the
compiled buckets are the ones the pods will run.
"""

from __future__ import annotations

import json

from .hashing import engine_identity
from .labels import ENGINE_IDENTITY_ANNOTATION, RUN_AS_USER, engine_job_name, engine_labels
from .server_settings import engine_settings, set_flags
from .sources import ModelSource
from .voice import Voice

CACHE_MOUNT = "/cache"
SOURCES_MOUNT = "/sources"

# Pod retries inside one Job; after that the operator retries the whole Job with its own backoff.
JOB_BACKOFF_LIMIT = 2
JOB_DEADLINE_S = 4 * 3600

# The builder image's ENTRYPOINT, named here too so that any image holding the package will do.
BUILD_COMMAND = ("python", "-m", "engine_jobs.build")

# The build reads a 3B checkpoint (6.6 GB in bf16) into host memory, writes the serving weights
# (and the FP8 copy with its scales), then compiles on the GPU: 16 GiB requested covers the bf16
# weights twice over, the 32 GiB limit leaves room for the FP8 pass and the compiler's peak.
BUILD_RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}


def pod_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def gpu_placement(voice: Voice) -> dict:
    """nodeSelector and tolerations that put a pod on a GPU of the voice's profile."""
    return {
        "nodeSelector": {"nvidia.com/gpu.product": voice.gpu.product_label, **voice.node_selector},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            *voice.tolerations,
        ],
    }


def _source_volume_name(claim: str, claims: list[str]) -> str:
    return f"source-{claims.index(claim)}"


def _source_args(source: ModelSource, claims: list[str], flag: str, revision_flag: str) -> list[str]:
    if source.is_pvc:
        assert source.pvc_claim is not None
        path = f"{SOURCES_MOUNT}/{_source_volume_name(source.pvc_claim, claims)}/{source.pvc_path}"
        return [flag, f"pvc:{path}"]
    return [flag, f"hub:{source.hub_repo}", revision_flag, str(source.revision)]


def build_args(voice: Voice, engine_hash: str) -> list[str]:
    """The builder's command line (its flags are defined in engine_jobs/build.py)."""
    claims = _source_claims(voice)
    return [
        *_source_args(voice.model, claims, "--model-source", "--revision"),
        *_source_args(voice.codec, claims, "--snac-source", "--snac-revision"),
        "--precision", voice.precision,
        "--backend", voice.backend,
        "--gpu-arch", voice.gpu.arch,
        "--compile", "auto",
        *set_flags(engine_settings(voice)),
        "--engine-hash", engine_hash,
        "--output", f"{CACHE_MOUNT}/{engine_hash}",
    ]


def _source_claims(voice: Voice) -> list[str]:
    claims: list[str] = []
    for source in (voice.model, voice.codec):
        if source.is_pvc and source.pvc_claim not in claims:
            claims.append(source.pvc_claim)  # type: ignore[arg-type]
    return claims


def engine_job(voice: Voice, engine_hash: str) -> dict:
    """The batch/v1 Job that builds (or fetches and lays out) the engine for `voice`."""
    claims = _source_claims(voice)
    volumes = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": voice.cache_claim}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [{"name": "cache", "mountPath": CACHE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    for claim in claims:
        name = _source_volume_name(claim, claims)
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{SOURCES_MOUNT}/{name}", "readOnly": True})

    resources = {
        "requests": {**BUILD_RESOURCES["requests"], "nvidia.com/gpu": 1},
        "limits": {**BUILD_RESOURCES["limits"], "nvidia.com/gpu": 1},
    }
    pod_spec: dict = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
        **gpu_placement(voice),
        "containers": [
            {
                "name": "build",
                "image": voice.builder_image,
                "imagePullPolicy": voice.image_pull_policy,
                "command": list(BUILD_COMMAND),
                "args": build_args(voice, engine_hash),
                "env": [
                    {"name": "HOME", "value": "/tmp"},
                    # Hub downloads are cached on the PVC, so a retried build resumes them.
                    {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/.hf"},
                ],
                "resources": resources,
                "securityContext": container_security_context(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }

    labels = engine_labels(engine_hash)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": engine_job_name(engine_hash),
            "namespace": voice.namespace,
            "labels": labels,
            "annotations": {
                ENGINE_IDENTITY_ANNOTATION: json.dumps(engine_identity(voice), sort_keys=True),
            },
        },
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "activeDeadlineSeconds": JOB_DEADLINE_S,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
