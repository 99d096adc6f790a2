"""The FP8 KV cache (`model.kv_cache_dtype: fp8`): per-vector scales, the model over it, the engine.

On the CPU the attention reads the cache through `LayerKV.read` (the GPU's Triton kernel applies
the same scales inside the kernel; `python -m orpheus_bench.kv_quality` checks it against this
path on the GPU, with the logit error and token agreement on the 3B model).
"""

import asyncio

import pytest
import torch

from orpheus_tts.engine.engine import Engine
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.model.kv_layer import LayerKV, quantize_fp8
from orpheus_tts.engine.session import AudioChunk, Outcome
from orpheus_tts.model.checks import relative_difference
from orpheus_tts.model.fp8 import FP8, FP8_MAX
from orpheus_tts.model.loader import load_model
from server_testkit import small_config

E4M3_STEP = 2.0 ** -3  # three mantissa bits: a rounding error of at most half a step, relative


def test_each_vector_keeps_its_own_scale_so_outliers_flatten_nothing_else():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 16)
    x[0, 0] *= 1e4  # an outlier vector far past the format's range
    x[1, 1] *= 1e-4  # and a quiet one far below its smallest normal
    q, scale = quantize_fp8(x)
    assert q.dtype == FP8 and scale.shape == (4, 2)
    assert torch.isfinite(q.float()).all() and float(q.float().abs().max()) == FP8_MAX
    restored = q.float() * scale[..., None]
    amax = x.abs().amax(dim=-1, keepdim=True)
    # Each element within half a step of its vector's own largest value: the quiet vector keeps
    # its precision beside the outlier.
    assert ((restored - x).abs() <= amax * E4M3_STEP / 2 + 1e-12).all()
    assert relative_difference(restored[1, 1], x[1, 1]) < 0.05


def test_write_then_read_returns_the_scaled_values_at_their_slots_and_positions():
    torch.manual_seed(1)
    cache = KVCache(n_layers=1, n_slots=3, n_kv_heads=2, max_tokens=8, head_dim=16, dtype=FP8, device="cpu")
    layer = cache.layers[0]
    assert layer.quantized and layer.k.dtype == FP8 and layer.k_scale.dtype == torch.float32
    keys, values = torch.randn(3, 2, 16), torch.randn(3, 2, 16) * 50
    slots, positions = torch.tensor([2, 0, 2]), torch.tensor([0, 5, 1])
    layer.write(slots, positions, keys, values)
    got_k, got_v = layer.read(torch.tensor([2, 0]), 6, torch.float32)
    assert got_k.shape == (2, 2, 6, 16)
    for row, (slot_row, pos) in enumerate([(0, 0), (1, 5), (0, 1)]):
        assert relative_difference(got_k[slot_row, :, pos], keys[row]) < 0.05
        assert relative_difference(got_v[slot_row, :, pos], values[row]) < 0.05
    plain = LayerKV(torch.zeros(4, 2, 8, 16), torch.zeros(4, 2, 8, 16))
    assert not plain.quantized
    # Half the bytes of a 16-bit cache, plus a 4-byte scale per 16 values here (per 128 in the 3B).
    bf16 = KVCache(1, 3, 2, 8, 16, torch.bfloat16, "cpu")
    assert cache.nbytes == bf16.nbytes // 2 + 2 * 4 * 2 * 8 * 4


@torch.inference_mode()
def _teacher_forced_logits(model, dtype, tokens, prompt_len):
    """Prefill `prompt_len` tokens of each row, then decode the rest one by one: every position's logits."""
    args = model.args
    rows, total = tokens.shape
    cache = KVCache(args.n_layers, rows + 1, args.n_kv_heads, total, args.head_dim, dtype, "cpu")
    slots = torch.arange(rows).flip(0)  # slots out of row order
    batch = model.make_batch(slots, torch.zeros(rows, dtype=torch.long), torch.full((rows,), prompt_len), prompt_len)
    logits = [model.logits(model(tokens[:, :prompt_len], batch, cache))[:, -1]]
    for t in range(prompt_len, total):
        step = model.make_decode_batch(slots, torch.full((rows,), t))
        logits.append(model.logits(model(tokens[:, t:t + 1], step, cache))[:, 0])
    return torch.stack(logits, dim=1)


def test_the_model_over_an_fp8_cache_gives_the_logits_of_a_full_precision_one():
    """The demo model's logits are small (std about 0.16), so agreement is a check of the numerics,
    not of speech quality; the GPU bench measures that on the 3B shape."""
    torch.manual_seed(0)
    model = load_model("random:demo", torch.device("cpu"), torch.float32, max_positions=512)
    tokens = torch.randint(128266, 128266 + 7 * 4096, (3, 160))
    want = _teacher_forced_logits(model, torch.float32, tokens, 24)
    got = _teacher_forced_logits(model, FP8, tokens, 24)
    assert relative_difference(got, want) < 0.03
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.95


def test_the_engine_speaks_over_an_fp8_cache_in_half_the_memory():
    async def speak(kv_dtype):
        engine = Engine.from_config(small_config(**{"model.kv_cache_dtype": kv_dtype})).start()
        try:
            events = [e async for e in engine.synthesize(engine.make_request("Hello there, this is a test.", seed=3))]
            return engine.kv_cache, events
        finally:
            engine.stop()

    full_cache, full = asyncio.run(speak("float32"))
    fp8_cache, fp8 = asyncio.run(speak("fp8"))
    assert fp8_cache.layers[0].k.dtype == FP8
    assert fp8_cache.nbytes < full_cache.nbytes / 2
    for events in (full, fp8):
        assert events[-1].outcome is Outcome.OK
        assert sum(e.frames for e in events if isinstance(e, AudioChunk)) == events[-1].metrics.frames > 0
    assert fp8[-1].metrics.frames == full[-1].metrics.frames  # the budget is the text's, whatever the cache


def test_an_unknown_kv_cache_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="model.kv_cache_dtype must be auto, fp8, .* got .float8."):
        Engine.from_config(small_config(**{"model.kv_cache_dtype": "float8"}))
