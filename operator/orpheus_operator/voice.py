"""An OrpheusVoice read into typed values, and the checks that decide whether it may roll out.

`Voice.from_body` takes the custom resource as the API returns it (or as a YAML file holds it),
applies the CRD defaults and then the operator's own (`OperatorSettings`: server and builder
images, GPU profile and engine cache claim for voices that name none), and gives the builders
plain attributes to read.
`refusal` says why a voice cannot be served (no GPU profile, over the slot budget, FP8 on a GPU
without it, ...) in words a person can act on; the operator then reports it in status and rolls
nothing out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .access import NetworkAccess, Security
from .crd import apply_defaults
from .lora_adapters import LoraAdapters
from .profiles import FP8_FIRST_ARCH, GPU_PROFILES, GPUProfile, SlotBudget, slot_budget
from .settings import ENV_PREFIX, OperatorSettings
from .sources import ModelSource

# The Deployment, Service, HPA and PDB take the voice's name; Services need a DNS-1035 label.
MAX_NAME_LENGTH = 52


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool
    min_replicas: int
    max_replicas: int
    target_ttfb_p95_ms: int
    target_active_sessions_per_pod: int
    target_saturation: float  # demand over real-time capacity per pod, in (0, 1]


@dataclass(frozen=True)
class Voice:
    """One OrpheusVoice: identity (name, namespace, uid, generation) and its defaulted spec."""

    name: str
    namespace: str
    uid: str | None
    generation: int | None
    model: ModelSource
    codec: ModelSource
    cache_claim: str
    default_voice: str
    profile: str
    precision: str
    backend: str
    gpu_profile: str | None  # None: neither the voice nor the operator names one (refused)
    sessions_per_pod: int
    max_batch_size: int
    context_tokens: int
    replicas: int
    autoscaling: Autoscaling
    image: str
    builder_image: str
    image_pull_policy: str
    termination_grace_s: int
    resources: dict = field(default_factory=dict)
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    security: Security = field(default_factory=Security)
    network: NetworkAccess = field(default_factory=NetworkAccess)
    adapters: LoraAdapters = field(default_factory=LoraAdapters)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], settings: OperatorSettings | None = None) -> "Voice":
        """`settings` supplies the defaults for the images, GPU profile and cache claim (built-in ones if None)."""
        settings = OperatorSettings() if settings is None else settings
        body = apply_defaults(dict(body))
        meta = body.get("metadata", {})
        spec = body["spec"]
        scaling = spec["autoscaling"]
        sessions = spec["sessionsPerPod"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            model=ModelSource.from_spec(spec["model"]),
            codec=ModelSource.from_spec(spec["codec"]),
            cache_claim=spec["engineCache"].get("claimName") or settings.engine_cache_claim,
            default_voice=spec["voice"],
            profile=spec["profile"],
            precision=spec["precision"],
            backend=spec["backend"],
            gpu_profile=spec.get("gpuProfile") or settings.default_gpu_profile or None,
            sessions_per_pod=sessions,
            max_batch_size=spec["maxBatchSize"],
            context_tokens=spec["contextTokens"],
            replicas=spec["replicas"],
            autoscaling=Autoscaling(
                enabled=scaling["enabled"],
                min_replicas=scaling["minReplicas"],
                max_replicas=scaling["maxReplicas"],
                target_ttfb_p95_ms=scaling["targetTtfbP95Ms"],
                target_active_sessions_per_pod=scaling.get("targetActiveSessionsPerPod") or max(1, sessions * 3 // 4),
                target_saturation=float(scaling["targetSaturation"]),
            ),
            image=spec.get("image") or settings.default_image,
            builder_image=spec.get("builderImage") or settings.default_builder_image,
            image_pull_policy=spec["imagePullPolicy"],
            termination_grace_s=spec["terminationGracePeriodSeconds"],
            resources=dict(spec.get("resources") or {}),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=list(spec.get("tolerations") or []),
            security=Security.from_spec(spec.get("security"), settings.security_defaults),
            network=NetworkAccess.from_spec(spec.get("networkPolicy"), settings.network_policy_defaults),
            adapters=LoraAdapters.from_spec(spec.get("adapters"), spec.get("adapterSlots"), settings.adapter_slots_defaults),
        )

    @property
    def has_known_gpu(self) -> bool:
        """Whether the GPU profile is set and in the table (the budget and engine hash need it)."""
        return self.gpu_profile in GPU_PROFILES

    @property
    def gpu(self) -> GPUProfile:
        if self.gpu_profile is None:
            raise ValueError(f"voice {self.namespace}/{self.name} has no GPU profile")
        return GPU_PROFILES[self.gpu_profile]

    @property
    def budget(self) -> SlotBudget:
        return slot_budget(self.gpu, self.precision, self.context_tokens,
                           lora_places=self.adapters.places, lora_rank=self.adapters.max_rank)


@dataclass(frozen=True)
class Refusal:
    """Why a voice is not rolled out: a CamelCase reason and a message with the numbers."""

    reason: str
    message: str


def refusal(voice: Voice) -> Refusal | None:
    """The first reason this voice cannot be served as asked, or None when it can."""
    if len(voice.name) > MAX_NAME_LENGTH:
        return Refusal("InvalidSpec", f"name {voice.name!r} is longer than {MAX_NAME_LENGTH} characters")
    if voice.max_batch_size > voice.sessions_per_pod:
        return Refusal(
            "InvalidSpec", f"maxBatchSize {voice.max_batch_size} exceeds sessionsPerPod {voice.sessions_per_pod}"
        )
    scaling = voice.autoscaling
    if scaling.enabled and scaling.max_replicas < scaling.min_replicas:
        return Refusal(
            "InvalidSpec",
            f"autoscaling.maxReplicas {scaling.max_replicas} is below minReplicas {scaling.min_replicas}",
        )
    if voice.security.has_limits and not voice.security.api_keys_secret:
        return Refusal("InvalidSpec", "security.limits are per API key: set security.apiKeys (or drop the limits)")
    problem = voice.adapters.problem()
    if problem is not None:
        return Refusal("InvalidSpec", problem)
    if voice.gpu_profile is None:
        return Refusal(
            "NoGPUProfile",
            f"spec.gpuProfile is not set and the operator has no default ({ENV_PREFIX}DEFAULT_GPU_PROFILE, "
            f"the Helm chart's voiceDefaults.gpuProfile); set one of {', '.join(sorted(GPU_PROFILES))}",
        )
    if not voice.has_known_gpu:
        return Refusal(
            "UnknownGPUProfile",
            f"GPU profile {voice.gpu_profile!r} is not one of {', '.join(sorted(GPU_PROFILES))}",
        )
    gpu = voice.gpu
    if voice.precision == "fp8" and not gpu.fp8:
        return Refusal(
            "PrecisionUnsupported",
            f"{gpu.name} ({gpu.arch}) has no FP8 support ({FP8_FIRST_ARCH} or newer needed); use precision bf16",
        )
    budget = voice.budget
    if voice.sessions_per_pod > budget.max_sessions:
        return Refusal("InsufficientGPUMemory", budget.describe(voice.sessions_per_pod))
    return None
