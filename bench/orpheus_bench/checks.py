"""Correctness checks the GPU bench records beside its timings, so a fast number from a wrong
kernel is caught in the same JSON: Triton decode attention against fp64, CUDA graph replay
against eager, the compiled parts against eager, FP8 against bf16.

Each writes into `results["checks"]` under a fixed key that people compare across runs.
Reaches into `runner.decode_step`, `runner.kv_cache`, `runner.sampler`, `sampler.sample`,
`model.make_decode_batch`, `model.make_batch`, `model.logits` and `DecodeGraphs.run`.
"""

from __future__ import annotations

import numpy as np
import torch

from orpheus_bench.server_parts import (
    Fp8Linear, KVCache, LayerKV, SamplingBatch, compiled_block_difference, decode_attention, decode_attention_reference,
    relative_difference)
from orpheus_bench.synthetic import load_rows
from orpheus_bench.timing import cuda_time_ms
from orpheus_bench.results import log


def check_attention(results):
    torch.manual_seed(0)
    k = torch.randn(9, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(6, 24, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([3, 0, 8, 5, 1, 7], device="cuda")
    lengths = torch.tensor([1, 17, 256, 257, 700, 1024], device="cuda")
    got = decode_attention(q, LayerKV(k, v), slots, lengths)
    ref = decode_attention_reference(q.double(), LayerKV(k.double(), v.double()), slots, lengths)
    results["checks"]["triton_attention_rel_err_vs_fp64"] = relative_difference(got, ref)


@torch.inference_mode()
def graph_vs_eager(runner, graphs, label, results):
    """Eager (no graph) step times at a few sizes, and how often graph and eager pick the same token."""
    agree = []
    for b in (1, 16, 64):
        # No repetition penalty: each run records its ids in the history the next one reads.
        slots = load_rows(runner, b, 512, seed=b, repetition_penalty=1.0)
        device_slots = torch.from_numpy(slots).cuda()
        with torch.compiler.set_stance("force_eager"):  # no graphs and no compiled code: the reference
            eager_ms = cuda_time_ms(lambda: runner.decode_step(device_slots), iters=10)
            load_rows(runner, b, 512, seed=b, repetition_penalty=1.0)
            eager_tokens, _ = runner.decode_step(device_slots)
        load_rows(runner, b, 512, seed=b, repetition_penalty=1.0)
        graph_tokens = graphs.run(slots)
        agree.append(float((eager_tokens == graph_tokens).float().mean()))
        results["eager_step_ms"].append(dict(precision=label, batch=b, context=512, step_ms=eager_ms))
        log(f"{label} eager batch {b}: {eager_ms:.2f} ms")
    results["checks"][f"graph_vs_eager_token_agreement_{label}"] = float(np.mean(agree))


@torch.inference_mode()
def compiled_parts_vs_eager(model, cache, sampler, label, results, b=16):
    """Where graph and eager tokens differ: one compiled block and the compiled sampler, each
    against eager on identical inputs. A random-weight model amplifies rounding through 28
    layers, so the whole model can disagree where every part agrees."""
    device = model.output.weight.device
    gen = torch.Generator(device=device).manual_seed(1)
    slots = torch.arange(b, device=device)
    positions = torch.randint(1, 500, (b,), device=device, generator=gen)
    x = torch.randn(b, 1, model.args.dim, device=device, dtype=torch.bfloat16, generator=gen)
    batch = model.make_decode_batch(slots, positions)
    results["checks"][f"compiled_block_vs_eager_rel_err_{label}"] = compiled_block_difference(model, x, batch, cache)
    hidden = torch.randn(b, model.args.dim, device=device, dtype=torch.bfloat16, generator=gen)
    sampling = SamplingBatch(
        slots=slots, temperature=torch.full((b,), 0.6, device=device), top_p=torch.full((b,), 0.8, device=device),
        repetition_penalty=torch.ones(b, device=device),
        seed=torch.randint(0, 2**31, (b,), device=device, generator=gen), counter=positions,
        frame_position=slots % 7, allow_eos=torch.ones(b, dtype=torch.int64, device=device))
    fused_tokens = sampler.sample(hidden, sampling)
    with torch.compiler.set_stance("force_eager"):
        eager_tokens = sampler.sample(hidden, sampling)
    results["checks"][f"compiled_sampler_vs_eager_token_agreement_{label}"] = float(
        (fused_tokens == eager_tokens).float().mean())


def fp8_matmul_accuracy(results):
    """One layer-sized matmul: FP8 against bf16 (the whole random model amplifies any error)."""
    lin = torch.nn.Linear(3072, 8192, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=0.02)
    x = torch.randn(64, 3072, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = x.double() @ lin.weight.double().t()
        results["checks"]["fp8_matmul_rel_err_vs_fp64"] = relative_difference(Fp8Linear.quantize(lin, rowwise=True)(x), ref)
        results["checks"]["bf16_matmul_rel_err_vs_fp64"] = relative_difference(lin(x), ref)


def fp8_accuracy(model_bf16_logits, model, tokens, results):
    with torch.inference_mode():
        logits = prompt_logits(model, tokens)
    results["checks"]["fp8_logits_rel_err_vs_bf16"] = relative_difference(logits, model_bf16_logits)
    results["checks"]["fp8_top1_agreement_vs_bf16"] = float(
        (logits.argmax(-1) == model_bf16_logits.argmax(-1)).float().mean())


def prompt_logits(model, tokens):
    args = model.args
    cache = KVCache(args.n_layers, tokens.shape[0], args.n_kv_heads, tokens.shape[1], args.head_dim,
                    torch.bfloat16, "cuda")
    n = tokens.shape[0]
    lengths = torch.full((n,), tokens.shape[1], device="cuda")
    batch = model.make_batch(torch.arange(n, device="cuda"), torch.zeros_like(lengths), lengths, tokens.shape[1])
    return model.logits(model(tokens, batch, cache))
