"""The engine hash: one name for everything that determines an engine build.

Two voices whose engines would be byte-for-byte the same get the same hash, so they share one
build Job and one directory on the cache PVC, and re-applying a voice starts nothing new.
What does not change the engine (voice name, sessions per pod, replicas, ...) stays out of it.
"""

from __future__ import annotations

import hashlib
import json

from .model_facts import BUILDER_VERSION
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
    return identity


def engine_hash(voice: Voice) -> str:
    """Short hex digest of `engine_identity` (sorted keys, compact JSON)."""
    canonical = json.dumps(engine_identity(voice), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:SHORT_HASH_LENGTH]
