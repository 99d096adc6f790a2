"""Decode steps without sessions: the engine's own runner around a KV cache of random keys and
values, with rows set up as streams some tokens in.

A step's time depends on the batch and the context, not on what was said, so the sweeps, the
profile and the CPU bench time the real runner on these inputs instead of driving the scheduler.
Reaches into `runner.state.field(name)` (the slot state's per-row tensors).
"""

from __future__ import annotations

import numpy as np
import torch

from orpheus_bench.server_parts import KVCache, ModelRunner, Sampler
from orpheus_tts import orpheus


def load_rows(runner, b: int, context: int, seed: int = 0, repetition_penalty: float = 1.1) -> np.ndarray:
    """Slots 0..b-1 set up as streams `context` tokens in (random last ids and seeds, every frame
    position): a decode step's inputs. Each step moves them one position on, so load them
    again before each timed run. Returns the slots."""
    rng = np.random.default_rng(seed)
    values = dict(token=orpheus.AUDIO_TOKEN_BASE + rng.integers(0, 4096, b), position=np.full(b, context - 1),
                  counter=np.zeros(b, dtype=np.int64), frame_position=np.arange(b) % 7,
                  seed=rng.integers(0, 2**31, b), allow_eos=np.ones(b, dtype=np.int64),
                  temperature=np.full(b, 0.6, dtype=np.float32), top_p=np.full(b, 0.8, dtype=np.float32),
                  repetition_penalty=np.full(b, repetition_penalty, dtype=np.float32))
    for name, array in values.items():
        runner.state.field(name)[:b].copy_(torch.from_numpy(np.asarray(array)))
    return np.arange(b, dtype=np.int64)


def synthetic_runner(model, n_slots: int, max_tokens: int, compiled: bool, dtype=torch.bfloat16):
    """The engine's runner around a KV cache of random keys and values (no graphs yet)."""
    args = model.args
    device = model.output.weight.device
    cache = KVCache(args.n_layers, n_slots, args.n_kv_heads, max_tokens, args.head_dim, dtype, device)
    for layer in cache.layers:
        for values in (layer.k, layer.v):
            values.copy_(torch.randn(values.shape, device=device, dtype=torch.bfloat16))  # no float8 normal_
    sampler = Sampler(model, n_slots + 1)
    if compiled:
        sampler.compile()
    return ModelRunner(model, cache, sampler, n_slots, cuda_graphs=False)
