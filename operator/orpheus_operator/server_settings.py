"""The `orpheus-tts` settings a voice implies: one source for the build Job, the pods and the hash.

The builder compiles CUDA graphs and kernels for the buckets these settings imply (decode batch
sizes up to `max_batch_size`, codec batches up to `max_concurrent_sessions`, the KV-cache shape
from `max_context_tokens`, the weights' precision), and a server started from the engine
refuses one whose recorded settings differ from its own (`engine.on_mismatch=refuse`, the
default). So the Job gets exactly `engine_settings`, the pods get the same plus what does not
change the engine (`serving_settings`), and the engine hash covers `engine_settings`: a shared
Job can then never build for another voice's buckets.
"""

from __future__ import annotations

from .voice import Voice


def engine_settings(voice: Voice) -> dict[str, str]:
    """The settings the engine is built for, as `--set` keys of `orpheus-tts serve` and the builder."""
    return {
        "scheduler.max_concurrent_sessions": str(voice.sessions_per_pod),
        "scheduler.max_batch_size": str(voice.max_batch_size),
        "scheduler.max_context_tokens": str(voice.context_tokens),
        # The budget assumed this precision: never let the server pick another.
        "model.quantization": "fp8" if voice.precision == "fp8" else "none",
        "profile": voice.profile,
        # The LoRA pool is captured inside the decode graphs (its places and rank; not the adapters).
        **voice.adapters.pool_settings(),
    }


def serving_settings(voice: Voice) -> dict[str, str]:
    """What the pods get: the engine's settings plus those that leave the engine as it is (the
    default voice, who may call: keys, TLS, per-key limits, and the voices mapped to LoRA adapters)."""
    return {**engine_settings(voice), "default_voice": voice.default_voice, **voice.security.server_settings(),
            **voice.adapters.server_settings()}


def set_flags(settings: dict[str, str]) -> list[str]:
    """`--set KEY=VALUE` for each setting, in order."""
    flags: list[str] = []
    for key, value in settings.items():
        flags += ["--set", f"{key}={value}"]
    return flags
