"""The OrpheusVoice CustomResourceDefinition, and CRD-style defaulting for voices read from files.

The schema is written here once. `make generate` writes it to `operator/crds/orpheusvoices.yaml`
and the chart's `crds/` (the test suite fails when a copy differs; `orpheus-operator crd`
prints the same text), the API server validates and defaults voices with it, and
`apply_defaults` gives voices that never passed an API server (`orpheus-operator render`, the
mock API server in tests) the same defaults.
"""

from __future__ import annotations

import copy
from typing import Any

from .access import network_policy_schema, security_schema
from .lora_adapters import adapter_slots_schema, adapter_status_schema, adapters_schema
from .model_facts import DEFAULT_VOICE, TOKENS_PER_SECOND, VOICES
from .profiles import FP8_FIRST_ARCH, GPU_PROFILES
from .settings import DEFAULT_BUILDER_IMAGE, DEFAULT_CACHE_CLAIM, DEFAULT_IMAGE
from .sources import source_schema

GROUP = "tts.orpheus.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OrpheusVoice"
PLURAL = "orpheusvoices"
SINGULAR = "orpheusvoice"
SHORT_NAMES = ["ov", "voice"]

DEFAULT_CODEC_REPO = "hubertsiuzdak/snac_24khz"
ENGINE_BUILD = "the engine build Job"


def _quantity_map() -> dict:
    return {
        "type": "object",
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        },
    }


def spec_schema() -> dict:
    return {
        "type": "object",
        "required": ["model"],
        "x-kubernetes-validations": [
            {"rule": "self.maxBatchSize <= self.sessionsPerPod", "message": "maxBatchSize must not exceed sessionsPerPod"},
            {
                "rule": "self.autoscaling.maxReplicas >= self.autoscaling.minReplicas",
                "message": "autoscaling.maxReplicas must be at least minReplicas",
            },
        ],
        "properties": {
            "model": source_schema("The Orpheus language model checkpoint (Hugging Face layout, safetensors).",
                                   hub_fetched_by=ENGINE_BUILD),
            "codec": source_schema(
                "The SNAC 24 kHz codec (config.json + pytorch_model.bin).",
                hub_fetched_by=ENGINE_BUILD,
                default={"hub": {"repo": DEFAULT_CODEC_REPO, "revision": "main"}},
            ),
            "engineCache": {
                "type": "object",
                "default": {},
                "description": "Where engine builds are cached, keyed by their hash. Share it between voices.",
                "properties": {
                    "claimName": {
                        "type": "string",
                        "description": "An existing PVC; ReadWriteMany lets pods on several nodes share a build. "
                        "Default: the operator's ORPHEUS_OPERATOR_ENGINE_CACHE_CLAIM (the Helm chart's "
                        f"engineCache.claimName), else {DEFAULT_CACHE_CLAIM}.",
                    },
                },
            },
            "voice": {
                "type": "string",
                "default": DEFAULT_VOICE,
                "pattern": r"^[^\s:,]+$",  # any script's voice names (유나, ऋतिका, 长乐): no space, `:` or `,`
                "description": f"Default voice for requests that name none: one of the model's voices (the "
                               f"English model's are {', '.join(VOICES)}; a multilingual one lists its own in "
                               f"voices.json).",
            },
            "profile": {
                "type": "string",
                "enum": ["conversational", "longform"],
                "default": "longform",
                "description": "The server's tuning profile: text length limits and targets.",
            },
            "precision": {
                "type": "string",
                "enum": ["bf16", "fp8"],
                "default": "bf16",
                "description": f"Weight precision; fp8 needs a GPU of {FP8_FIRST_ARCH} or newer (Ada, Hopper). "
                "KV cache stays bf16.",
            },
            "backend": {"type": "string", "enum": ["torch", "tensorrt-llm"], "default": "torch"},
            "gpuProfile": {
                "type": "string",
                "enum": sorted(GPU_PROFILES),
                "description": "The GPU each pod gets one of; sizes the slot budget and selects nodes. "
                "Default: the operator's ORPHEUS_OPERATOR_DEFAULT_GPU_PROFILE (the Helm chart's "
                "voiceDefaults.gpuProfile); a voice with neither is refused (Ready=False, NoGPUProfile).",
            },
            "sessionsPerPod": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1024,
                "default": 16,
                "description": "Concurrent sessions per pod, each holding a KV-cache slot of contextTokens.",
            },
            "maxBatchSize": {
                "type": "integer",
                "minimum": 1,
                "maximum": 256,
                "default": 16,
                "description": "Sessions decoded together in one step.",
            },
            "contextTokens": {
                "type": "integer",
                "minimum": 256,
                "maximum": 131072,
                "default": 4096,
                "description": "Prompt plus generated tokens per session (the KV slot length). "
                f"{TOKENS_PER_SECOND:.0f} tokens = 1 s of audio.",
            },
            "replicas": {
                "type": "integer",
                "minimum": 0,
                "default": 1,
                "description": "Pods when autoscaling is disabled (the scale subresource sets it). "
                "With autoscaling enabled the HPA owns the replica count and this is ignored.",
            },
            "autoscaling": {
                "type": "object",
                "default": {},
                "properties": {
                    "enabled": {"type": "boolean", "default": True},
                    "minReplicas": {"type": "integer", "minimum": 1, "default": 1},
                    "maxReplicas": {"type": "integer", "minimum": 1, "default": 4},
                    "targetTtfbP95Ms": {
                        "type": "integer",
                        "minimum": 1,
                        "default": 250,
                        "description": "Scale out when the per-pod time to first audio byte, 95th percentile, exceeds this.",
                    },
                    "targetActiveSessionsPerPod": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Scale out above this many active sessions per pod (default: 3/4 of sessionsPerPod).",
                    },
                    "targetSaturation": {
                        "type": "number",
                        # OpenAPI v3.0, as CRDs take it: exclusiveMinimum is a flag on minimum (> 0).
                        "minimum": 0,
                        "exclusiveMinimum": True,
                        "maximum": 1,
                        "default": 0.8,
                        "description": "Scale out when demand over real-time capacity per pod (the server's "
                        "orpheus_tts_saturation: admitted plus queued sessions over the streams it can keep "
                        "in real time) passes this; 1 is where requests start to queue.",
                    },
                },
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "description": "Server image. Default: the operator's ORPHEUS_OPERATOR_DEFAULT_IMAGE (the Helm "
                f"chart's voiceDefaults.image), else {DEFAULT_IMAGE}.",
            },
            "builderImage": {
                "type": "string",
                "minLength": 1,
                "description": "Image of the engine build Job: the server image plus the C compiler Triton "
                "builds its launchers with. Default: the operator's ORPHEUS_OPERATOR_DEFAULT_BUILDER_IMAGE "
                f"(the Helm chart's voiceDefaults.builderImage), else {DEFAULT_BUILDER_IMAGE}.",
            },
            "imagePullPolicy": {
                "type": "string",
                "enum": ["Always", "IfNotPresent", "Never"],
                "default": "IfNotPresent",
                "description": "Pull policy of the server image and the builder image.",
            },
            "resources": {
                "type": "object",
                "description": "CPU and memory for the server container; one nvidia.com/gpu is always added.",
                "properties": {"requests": _quantity_map(), "limits": _quantity_map()},
            },
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                        "value": {"type": "string"},
                        "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                        "tolerationSeconds": {"type": "integer"},
                    },
                },
            },
            "terminationGracePeriodSeconds": {
                "type": "integer",
                "minimum": 10,
                "maximum": 3600,
                "default": 120,
                "description": "Time a stopping pod has to finish its streams (longer for long-form audio).",
            },
            "security": security_schema(),
            "networkPolicy": network_policy_schema(),
            "adapters": adapters_schema(),
            "adapterSlots": adapter_slots_schema(),
        },
    }


def _condition_schema() -> dict:
    return {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "minimum": 0},
        },
    }


def status_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "observedGeneration": {"type": "integer"},
            "engineHash": {"type": "string", "description": "Hash of what determines the engine build."},
            "engineJob": {"type": "string"},
            "engineBuildFailures": {"type": "integer", "description": "Failed builds of the current engine so far."},
            "engineBuildRetryAt": {
                "type": "string",
                "format": "date-time",
                "description": "After a failed build: when the next build Job starts.",
            },
            "gpuProfile": {"type": "string", "description": "The GPU profile in use: spec.gpuProfile or the operator's default."},
            "maxSessionsPerPod": {"type": "integer", "description": "Sessions that fit one GPU (the slot budget, after "
                                  "the LoRA adapter places)."},
            "replicas": {"type": "integer", "description": "Pods of the Deployment (the scale subresource reads it)."},
            "readyReplicas": {"type": "integer"},
            "selector": {"type": "string", "description": "Label selector of the pods, for the scale subresource."},
            "adapters": adapter_status_schema(),
        },
    }


def crd_manifest() -> dict:
    """The CustomResourceDefinition, as applied by `kubectl apply` or the Helm chart."""
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": SHORT_NAMES, "listKind": f"{KIND}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A voice served by Orpheus TTS pods on GPUs: engine build, rollout and autoscaling.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Engine", "type": "string", "jsonPath": ".status.engineHash"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Sessions/pod", "type": "integer", "jsonPath": ".spec.sessionsPerPod"},
                        {"name": "GPU", "type": "string", "jsonPath": ".status.gpuProfile", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def voice_schema() -> dict:
    """The openAPIV3Schema that voices are validated against."""
    return crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(obj: Any, schema: dict | None = None) -> Any:
    """Fill in schema defaults the way the API server does for structural schemas.

    A default applies where the field is absent; nested defaults apply inside objects that are
    present (or were just defaulted). Returns a new object; the input is not changed.
    """
    schema = voice_schema() if schema is None else schema
    obj = copy.deepcopy(obj)
    _default_into(obj, schema)
    return obj


def _default_into(obj: Any, schema: dict) -> None:
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default_into(obj[key], sub)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default_into(item, schema["items"])
