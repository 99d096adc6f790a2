"""The engine hash: one name for everything that determines an engine build.

Two voices whose engines would be the same get the same hash, so they share one build Job and
one directory on the cache PVC, and re-applying a voice starts nothing new. The engine holds
weights for one precision and compiled kernels and CUDA graphs for one GPU architecture and one
set of buckets, so the hash covers the checkpoint (model and codec sources), precision, backend,
GPU architecture, the builder version and the server settings the Job passes
(`server_settings.engine_settings`: sessions per pod, max batch size, context tokens,
quantization, profile, the LoRA adapter pool's places and rank). Two voices with different slot
budgets therefore get two engines, each compiled for its own buckets. What leaves the engine as it
is (voice name, default voice, replicas, autoscaling, the LoRA adapters themselves, ...) stays
out. So do the image references, the server's (`spec.image`) and the builder's
(`spec.builderImage`) alike: what the builder writes is versioned by
`builderVersion`, and the engine's manifest records the torch, CUDA, Triton and orpheus-tts
versions it was compiled with, which the server checks against its own at start.
"""

from __future__ import annotations

import hashlib
import json

from .model_facts import BUILDER_VERSION
from .server_settings import engine_settings
from .voice import Voice

# Characters of the sha256 kept in names and paths: 64 bits, far from colliding in one namespace.
SHORT_HASH_LENGTH = 16


def engine_identity(voice: Voice) -> dict[str, str]:
    """The inputs of the engine build, in a canonical form."""
    identity = {
        "precision": voice.precision,
        "backend": voice.backend,
        "gpuArch": voice.gpu.arch,
        "builderVersion": BUILDER_VERSION,
    }
    identity.update({f"model.{k}": v for k, v in voice.model.identity().items()})
    identity.update({f"codec.{k}": v for k, v in voice.codec.identity().items()})
    identity.update({f"settings.{k}": v for k, v in engine_settings(voice).items()})
    return identity


def engine_hash(voice: Voice) -> str:
    """Short hex digest of `engine_identity` (sorted keys, compact JSON)."""
    canonical = json.dumps(engine_identity(voice), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:SHORT_HASH_LENGTH]
