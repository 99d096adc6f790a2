"""The compiled transformer block and sampler against eager execution (the start-up check's parts)."""

import pytest
import torch

from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.model.checks import compiled_block_difference, relative_difference
from orpheus_tts.model.loader import compile_model, load_model


def test_compiled_block_and_sampler_match_eager():
    torch.manual_seed(0)
    model = load_model("random:demo", torch.device("cpu"), torch.float32, max_positions=256)
    args = model.args
    cache = KVCache(args.n_layers, 5, args.n_kv_heads, 128, args.head_dim, torch.float32, "cpu")
    sampler = Sampler(model, 5)
    slots, positions = torch.arange(4), torch.tensor([0, 3, 64, 127])
    x = torch.randn(4, 1, args.dim)
    batch = model.make_decode_batch(slots, positions)
    assert compiled_block_difference(model, x, batch, cache) == 0.0  # nothing compiled yet: the same code

    compile_model(model)
    sampler.compile()
    difference = compiled_block_difference(model, x, batch, cache)
    assert 0.0 <= difference < 1e-4  # fp32: fusion reorders sums, nothing more

    hidden = torch.randn(4, args.dim)
    sampling = SamplingBatch(slots=slots, temperature=torch.full((4,), 0.6), top_p=torch.full((4,), 0.8),
                             repetition_penalty=torch.ones(4), seed=torch.tensor([1, 2, 3, 2**31 - 1]),
                             counter=positions, frame_position=torch.tensor([0, 1, 5, 6]),
                             allow_eos=torch.ones(4, dtype=torch.int64))
    fused = sampler.sample(hidden, sampling)
    with torch.compiler.set_stance("force_eager"):
        eager = sampler.sample(hidden, sampling)
    assert torch.equal(fused, eager)


def test_relative_difference_is_scaled_by_the_reference():
    want = torch.tensor([3.0, 4.0])
    assert relative_difference(want + torch.tensor([0.0, 0.5]), want) == pytest.approx(0.1)
    assert relative_difference(torch.ones(2), torch.zeros(2)) > 1e6  # a zero reference cannot hide a difference
