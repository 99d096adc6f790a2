"""Slot budget, refusals and the engine hash."""

from __future__ import annotations

import pytest
from operator_testkit import load_example

from orpheus_operator.hashing import engine_hash
from orpheus_operator.profiles import GIB, GPU_PROFILES, ORPHEUS_3B, slot_budget
from orpheus_operator.voice import Voice, refusal


def voice(**spec) -> Voice:
    body = load_example("voice-rtx4090-conversational.yaml")
    body["spec"].update(spec)
    return Voice.from_body(body)


def test_profiles_cover_the_gpus_we_deploy_on():
    assert {"rtx-4090", "l4", "a10g", "a100-40gb", "a100-80gb", "h100-80gb", "h200"} <= set(GPU_PROFILES)
    assert [name for name, p in sorted(GPU_PROFILES.items()) if p.fp8] == ["h100-80gb", "h200", "l4", "rtx-4090"]
    assert GPU_PROFILES["l4"].arch == GPU_PROFILES["rtx-4090"].arch == "sm_89"


def test_kv_cache_per_token_is_the_orpheus_3b_figure():
    assert ORPHEUS_3B.kv_bytes_per_token == 28 * 8 * 128 * 2 * 2 == 114_688
    assert ORPHEUS_3B.weight_bytes("bf16") == 6_600_000_000
    assert ORPHEUS_3B.weight_bytes("fp8") < ORPHEUS_3B.weight_bytes("bf16") * 0.6


def test_budget_adds_up_to_the_gpu_memory():
    b = slot_budget(GPU_PROFILES["rtx-4090"], "bf16", 4096)
    assert b.kv_bytes_per_session == 4096 * 114_688
    used = b.weight_bytes + b.fixed_bytes + b.max_sessions * b.kv_bytes_per_session
    assert used <= b.gpu_bytes < used + b.kv_bytes_per_session
    assert b.max_sessions == 32


@pytest.mark.parametrize("profile, precision, context, sessions", [
    ("rtx-4090", "fp8", 2048, 76),
    ("rtx-4090", "bf16", 8192, 16),
    ("l4", "fp8", 4096, 35),
    ("a10g", "bf16", 4096, 29),
    ("h100-80gb", "bf16", 8192, 76),
    ("h200", "fp8", 8192, 145),
])
def test_sessions_that_fit(profile, precision, context, sessions):
    assert slot_budget(GPU_PROFILES[profile], precision, context).max_sessions == sessions


def test_more_context_means_fewer_sessions():
    counts = [slot_budget(GPU_PROFILES["l4"], "bf16", c).max_sessions for c in (1024, 2048, 4096, 8192)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 4 * counts[-1] - 4


def test_over_budget_is_refused_with_the_numbers():
    r = refusal(voice(sessionsPerPod=128, contextTokens=8192))
    assert r.reason == "InsufficientGPUMemory"
    assert r.message == (
        "128 sessions x 8192 tokens need 112.0 GiB of KV cache; rtx-4090 has 24.0 GiB, of which 3.5 GiB go to "
        "fp8 weights and 3.7 GiB to SNAC and workspace, leaving 16.8 GiB: at most 19 sessions fit"
    )


def test_fp8_needs_ada_or_hopper():
    assert refusal(voice(gpuProfile="a100-80gb")).reason == "PrecisionUnsupported"
    assert refusal(voice(gpuProfile="a100-80gb", precision="bf16")) is None
    assert refusal(voice(gpuProfile="h200")) is None


def test_a_model_larger_than_the_gpu_fits_no_session():
    b = slot_budget(GPU_PROFILES["a10g"], "bf16", 131072)
    assert b.max_sessions == 0 and b.kv_budget_bytes < 16 * GIB


def test_engine_hash_depends_only_on_what_builds_the_engine():
    base = engine_hash(voice())
    assert engine_hash(voice(voice="leo")) == base  # the default voice leaves the engine as it is
    assert engine_hash(voice(gpuProfile="l4")) == base  # same architecture, sm_89
    assert engine_hash(voice(gpuProfile="h100-80gb")) != base
    assert engine_hash(voice(precision="bf16")) != base
    assert engine_hash(voice(backend="tensorrt-llm")) != base
    assert engine_hash(voice(model={"hub": {"repo": "canopylabs/orpheus-3b-0.1-ft", "revision": "v2"}})) != base
    assert len(base) == 16 and int(base, 16) >= 0


def test_engines_for_other_slot_budgets_get_other_hashes():
    """The engine is compiled for the buckets of its settings: a voice with another budget must not share it."""
    base = engine_hash(voice())
    for change in ({"sessionsPerPod": 8, "maxBatchSize": 8}, {"maxBatchSize": 16}, {"contextTokens": 4096},
                   {"profile": "longform"}):
        assert engine_hash(voice(**change)) != base, change

