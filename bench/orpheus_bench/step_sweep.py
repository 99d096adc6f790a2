"""The decode step swept over batch sizes and context lengths, in bf16, FP8 and FP8 over an FP8
KV cache (`fp8kv`): how far the step is from the real-time limit and from the weight-read floor.

Per (precision, batch, context): the graph replay alone, the step as the engine sees it (host
staging, copies, replay, token readback), tokens/s, bytes moved and the share of the copy
bandwidth that is. Reaches into `DecodeGraphs.buckets`, `.capture()`, `.verify(tolerance)`,
`.bucket_for(b)`, `.run(slots)` and `._graphs[bucket].replay()`, `kv_cache.nbytes` and `n_slots`,
and the weights of each block (`attention.wqkv/wo`, `feed_forward.w13/w2`, `weight_fp8`).
"""

from __future__ import annotations

import gc
import time

import torch

from orpheus_bench import checks
from orpheus_bench.results import log
from orpheus_bench.server_parts import FP8, DecodeGraphs, LoraPool, compile_model, load_model, quantize_to_fp8
from orpheus_bench.synthetic import load_rows, synthetic_runner
from orpheus_bench.timing import cuda_time_ms
from orpheus_tts import orpheus

LORA_RANK = 64  # adapters.max_rank's default: each place is sized for it


def measure_weight_bytes(model) -> int:
    total = 0
    for block in model.layers:
        for mod in (block.attention.wqkv, block.attention.wo, block.feed_forward.w13, block.feed_forward.w2):
            total += mod.weight_fp8.nbytes if hasattr(mod, "weight_fp8") else mod.weight.nbytes
        total += block.attention_norm.weight.nbytes + block.ffn_norm.weight.nbytes
    head_rows = orpheus.AUDIO_VOCAB_SIZE + 1
    return total + head_rows * model.args.dim * model.output.weight.element_size()


@torch.inference_mode()
def step_sweep(model, label, batches, contexts, copy_bw, results, max_tokens, compiled, kv_dtype=torch.bfloat16,
               lora_places: int = 0):
    """Time graph replays of the decode step at every (batch, context); with `lora_places`, a
    LoRA pool of that many rank-64 adapters attached and the rows spread over them."""
    if lora_places:
        pool = LoraPool(model.args, lora_places, LORA_RANK, model.output.weight.device, torch.bfloat16)
        for tensor in pool.tensors():
            tensor.normal_(0.0, 0.01)
        model.attach_lora(pool)  # before the runner: its graphs capture the adapters' part
    runner = synthetic_runner(model, max(batches), max_tokens, compiled, kv_dtype)
    if lora_places:
        runner.state.field("adapter")[:max(batches)] = torch.arange(max(batches)) % lora_places
    kv_bytes_per_token = runner.kv_cache.nbytes / ((runner.kv_cache.n_slots + 1) * max_tokens)
    graphs = DecodeGraphs(runner, max(batches))
    graphs.buckets = sorted(set(batches))  # the sweep's sizes only: capture what is timed
    t0 = time.time()
    graphs.capture()
    results["graph_capture_s"][label] = time.time() - t0
    verified = graphs.verify(tolerance=float("inf"))
    results["checks"][f"graph_replay_vs_uncaptured_rel_err_{label}"] = verified["graph"]
    weight_bytes = measure_weight_bytes(model)
    rows = []
    for ctx in contexts:
        for b in batches:
            bucket = graphs.bucket_for(b)
            slots = load_rows(runner, b, ctx)
            graphs.run(slots)
            replay_ms = cuda_time_ms(lambda: graphs._graphs[bucket].replay())  # noqa: SLF001
            # Whole step as the engine sees it: host staging, copies, replay, token readback.
            slots = load_rows(runner, b, ctx)
            for _ in range(3):
                graphs.run(slots).tolist()
            t = time.perf_counter()
            n = 20
            for _ in range(n):
                graphs.run(slots).tolist()
            host_ms = (time.perf_counter() - t) / n * 1e3
            kv_bytes = b * ctx * kv_bytes_per_token
            moved = weight_bytes + kv_bytes
            row = dict(precision=label, batch=b, context=ctx, replay_ms=replay_ms, step_ms=host_ms,
                       tokens_per_s=b / (host_ms / 1e3), bytes_per_step=moved,
                       bandwidth_util=moved / (replay_ms / 1e3) / copy_bw,
                       realtime_streams_at_this_step=b if host_ms <= 1e3 / orpheus.TOKENS_PER_SECOND else 0)
            rows.append(row)
            log(f"{label:5s} ctx {ctx:5d} batch {b:4d}: replay {replay_ms:6.2f} ms, step {host_ms:6.2f} ms, "
                f"{row['tokens_per_s']:8.0f} tok/s, BW util {row['bandwidth_util']:.2f}")
    checks.graph_vs_eager(runner, graphs, label, results)
    if compiled:
        checks.compiled_parts_vs_eager(model, runner.kv_cache, runner.sampler, label, results)
    del graphs, runner
    if lora_places:
        model.attach_lora(None)
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def sweeps(model_path, precisions, compiled, results, batches, contexts, bw, save, lora_places=()):
    """The `sweep` section: bf16, then the same model quantised to FP8 (with the FP8 checks between)."""
    model = load_model(model_path, torch.device("cuda"), torch.bfloat16, max_positions=max(contexts) + 8)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, orpheus.VOCAB_SIZE, (4, 64), device="cuda")
    with torch.inference_mode():
        bf16_logits = checks.prompt_logits(model, tokens)
    if compiled:
        compile_model(model)
    if "bf16" in precisions:
        results["step_sweep"] += step_sweep(model, "bf16", batches, contexts, bw, results, max(contexts), compiled)
        save()
    results["fp8_scaling"] = quantize_to_fp8(model)
    checks.fp8_matmul_accuracy(results)
    checks.fp8_accuracy(bf16_logits, model, tokens, results)
    log("checks", results["checks"])
    if "fp8" in precisions:
        results["step_sweep"] += step_sweep(model, "fp8", batches, contexts, bw, results, max(contexts), compiled)
        save()
    if "fp8kv" in precisions:  # FP8 weights over an FP8 KV cache (model.kv_cache_dtype: fp8)
        results["step_sweep"] += step_sweep(model, "fp8kv", batches, contexts, bw, results, max(contexts), compiled,
                                            kv_dtype=FP8)
        save()
    for places in lora_places:  # FP8 weights with a LoRA pool: what resident custom voices cost a step
        results["step_sweep"] += step_sweep(model, f"fp8+lora{places}", batches, contexts, bw, results, max(contexts),
                                            compiled, lora_places=places)
        save()
    del model
    gc.collect()
    torch.cuda.empty_cache()
