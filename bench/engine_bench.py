"""Engine benchmark: checks, then times the Orpheus-3B decode step, SNAC and in-engine TTFB.

    python bench/engine_bench.py --model random:orpheus-3b --out bench/results/h100

Runs on one GPU in one call (random weights, no download). In order: copy bandwidth;
correctness checks (Triton decode attention vs SDPA, CUDA graph replay vs eager, FP8 logits
vs bf16, fp16 SNAC vs fp32); the decode step swept over batch sizes and context lengths in
bf16 and FP8 (step time, tokens/s, bytes moved, bandwidth use); SNAC decode time per batch;
the `transformers` baseline; in-engine TTFB and real-time share at rising concurrency.
Everything lands in one JSON (device, torch version, git commit, command) plus PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from orpheus_tts import orpheus  # noqa: E402
from orpheus_tts.codec.snac_codec import SnacCodec  # noqa: E402
from orpheus_tts.config import load_config  # noqa: E402
from orpheus_tts.engine.cuda_graphs import DecodeGraphs  # noqa: E402
from orpheus_tts.engine.kv_cache import KVCache  # noqa: E402
from orpheus_tts.engine.sampler import Sampler  # noqa: E402
from orpheus_tts.model.attention import decode_attention, decode_attention_reference  # noqa: E402
from orpheus_tts.model.fp8 import quantize_to_fp8  # noqa: E402
from orpheus_tts.model.loader import (  # noqa: E402
    compile_model, compiled_block_difference, load_model, relative_difference)


def log(*a):
    print(*a, flush=True)


def cuda_time_ms(fn, iters=30, warmup=5) -> float:
    """Median of per-iteration device times (events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(1 << 30, device="cuda", dtype=torch.float32)  # 4 GiB
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), iters=10)
    bw = 2 * src.nbytes / (ms / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return bw


def check_attention(results):
    torch.manual_seed(0)
    k = torch.randn(9, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(6, 24, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([3, 0, 8, 5, 1, 7], device="cuda")
    lengths = torch.tensor([1, 17, 256, 257, 700, 1024], device="cuda")
    got = decode_attention(q, k, v, slots, lengths)
    ref = decode_attention_reference(q.double(), k.double(), v.double(), slots, lengths)
    results["checks"]["triton_attention_rel_err_vs_fp64"] = relative_difference(got, ref)


def measure_weight_bytes(model) -> int:
    total = 0
    for block in model.layers:
        for mod in (block.attention.wqkv, block.attention.wo, block.feed_forward.w13, block.feed_forward.w2):
            total += mod.weight_fp8.nbytes if hasattr(mod, "weight_fp8") else mod.weight.nbytes
        total += block.attention_norm.weight.nbytes + block.ffn_norm.weight.nbytes
    head_rows = orpheus.AUDIO_VOCAB_SIZE + 1
    return total + head_rows * model.args.dim * model.output.weight.element_size()


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


def synthetic_runner(model, n_slots: int, max_tokens: int, compiled: bool):
    """The engine's runner around a KV cache of random keys and values (no graphs yet)."""
    from orpheus_tts.engine.runner import ModelRunner

    args = model.args
    device = model.output.weight.device
    cache = KVCache(args.n_layers, n_slots, args.n_kv_heads, max_tokens, args.head_dim, torch.bfloat16, device)
    for kc, vc in cache.layers:
        kc.normal_()
        vc.normal_()
    sampler = Sampler(model, n_slots + 1)
    if compiled:
        sampler.compile()
    return ModelRunner(model, cache, sampler, n_slots, cuda_graphs=False)


@torch.inference_mode()
def step_sweep(model, label, batches, contexts, copy_bw, results, max_tokens, compiled):
    """Time graph replays of the decode step at every (batch, context)."""
    args = model.args
    runner = synthetic_runner(model, max(batches), max_tokens, compiled)
    graphs = DecodeGraphs(runner, max(batches))
    graphs.buckets = sorted(set(batches))  # the sweep's sizes only: capture what is timed
    t0 = time.time()
    graphs.capture()
    results["graph_capture_s"][label] = time.time() - t0
    checks = graphs.verify(tolerance=float("inf"))
    results["checks"][f"graph_replay_vs_uncaptured_rel_err_{label}"] = checks["graph"]
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
            kv_bytes = b * ctx * args.kv_bytes_per_token
            moved = weight_bytes + kv_bytes
            row = dict(precision=label, batch=b, context=ctx, replay_ms=replay_ms, step_ms=host_ms,
                       tokens_per_s=b / (host_ms / 1e3), bytes_per_step=moved,
                       bandwidth_util=moved / (replay_ms / 1e3) / copy_bw,
                       realtime_streams_at_this_step=b if host_ms <= 1e3 / orpheus.TOKENS_PER_SECOND else 0)
            rows.append(row)
            log(f"{label:5s} ctx {ctx:5d} batch {b:4d}: replay {replay_ms:6.2f} ms, step {host_ms:6.2f} ms, "
                f"{row['tokens_per_s']:8.0f} tok/s, BW util {row['bandwidth_util']:.2f}")
    # Eager (no graph) reference at a few sizes, and graph-vs-eager agreement.
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
    if compiled:
        compiled_parts_vs_eager(model, runner.kv_cache, runner.sampler, label, results)
    del graphs, runner
    gc.collect()
    torch.cuda.empty_cache()
    return rows


@torch.inference_mode()
def compiled_parts_vs_eager(model, cache, sampler, label, results, b=16):
    """Where graph and eager tokens differ: one compiled block and the compiled sampler, each
    against eager on identical inputs. A random-weight model amplifies rounding through 28
    layers, so the whole model can disagree where every part agrees."""
    from orpheus_tts.engine.sampler import SamplingBatch

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
    from orpheus_tts.model.fp8 import Fp8Linear

    lin = torch.nn.Linear(3072, 8192, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=0.02)
    x = torch.randn(64, 3072, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = x.double() @ lin.weight.double().t()
        results["checks"]["fp8_matmul_rel_err_vs_fp64"] = relative_difference(Fp8Linear(lin, rowwise=True)(x), ref)
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


def snac_bench(results):
    codec32 = SnacCodec.load("random", torch.device("cuda"), noise=False)
    rows = []
    for window in (4, 5):
        for b in (1, 16, 64, 128, 256):
            frames = torch.randint(0, 4096, (b, window, 7), device="cuda")
            ms = cuda_time_ms(lambda: codec32.decode(frames), iters=10, warmup=2)
            rows.append(dict(batch=b, window_frames=window, ms=ms, dtype="float32"))
            log(f"SNAC fp32 batch {b} window {window}: {ms:.2f} ms")
    frames = torch.randint(0, 4096, (16, 5, 7), device="cuda")
    ref = codec32.decode(frames)
    codec16 = SnacCodec.load("random", torch.device("cuda"), noise=False, dtype=torch.float16)
    out16 = codec16.decode(frames)
    noise = (ref - out16).pow(2).sum()
    results["checks"]["snac_fp16_snr_db_vs_fp32"] = float(10 * torch.log10(ref.pow(2).sum() / noise))
    for b in (16, 64, 256):
        frames = torch.randint(0, 4096, (b, 4, 7), device="cuda")
        ms16 = cuda_time_ms(lambda: codec16.decode(frames), iters=10, warmup=2)
        rows.append(dict(batch=b, window_frames=4, ms=ms16, dtype="float16"))
        log(f"SNAC fp16 batch {b} window 4: {ms16:.2f} ms")
    codec16.enable_graphs(4, 256)
    graphed = codec16.decode(torch.randint(0, 4096, (16, 4, 7)))
    eager = codec16._decode_codes(codec16._graph_inputs[:16].clone())  # noqa: SLF001 (same codes, eager)
    results["checks"]["snac_graph_vs_eager_max_abs_diff"] = float((graphed - eager).abs().max())
    for b in (1, 16, 64, 256):
        frames = torch.randint(0, 4096, (b, 4, 7))
        ms = cuda_time_ms(lambda: codec16.decode(frames), iters=10, warmup=2)
        rows.append(dict(batch=b, window_frames=4, ms=ms, dtype="float16", cuda_graph=True))
        log(f"SNAC fp16 graph batch {b} window 4: {ms:.2f} ms")
    results["snac"] = rows
    del codec32, codec16
    torch.cuda.empty_cache()


def transformers_baseline(results, batches):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=orpheus.VOCAB_SIZE, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                      num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                      rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=8192,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rows = []
    for b in batches:
        prompt = torch.randint(0, 128000, (b, 40), device="cuda")
        new = 48
        kwargs = dict(do_sample=True, temperature=0.6, top_p=0.8, repetition_penalty=1.1, max_new_tokens=new,
                      min_new_tokens=new, pad_token_id=0)
        model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(prompt, **kwargs)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        rows.append(dict(batch=b, tokens_per_s=b * new / s, ms_per_step=s / new * 1e3))
        log(f"transformers batch {b}: {b * new / s:.0f} tok/s")
    results["transformers_baseline"] = rows
    del model
    gc.collect()
    torch.cuda.empty_cache()


# Settings the engine reads at every step: a variant of these reuses the running engine (no
# second start-up) and runs level by level beside the configured engine.
LIVE_KEYS = ("scheduler.overlap_steps", "scheduler.adaptive_chunks", "scheduler.adaptive_margin_s",
             "scheduler.flush_every_n_tokens",
             "scheduler.flush_startup_frames", "scheduler.ttfb_priority_tokens", "scheduler.max_prefill_tokens",
             "scheduler.prefill_wait_ms", "scheduler.prefill_wait_min_load")


def _setting(config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _typed_values(overrides: dict) -> dict:
    """Config overrides given as text, with the types the config gives them."""
    typed = load_config(environ={}, overrides=overrides)
    return {key: _setting(typed, key) for key in overrides}


def _apply_live(config, values: dict) -> None:
    for key, value in values.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)


async def engine_load(levels, max_batch, quantization, requests, overrides, live_variants=()) -> dict:
    """The load benchmark's standard workload (`orpheus-tts bench --in-process`), plus where the
    engine thread's time went at each level and the GPU memory in use. Each live variant runs
    every level right after the configured engine on the same engine, so the A/B shares one
    start-up and the GPU's state."""
    from orpheus_tts.engine.engine import Engine
    from orpheus_tts.engine.observer import EngineObserver
    from orpheus_tts.loadbench import DEFAULT_TEXT, EngineTarget

    max_sessions = max(levels)
    config = load_config(environ={}, overrides={
        "model.path": "random:orpheus-3b", "codec.path": "random", "codec.noise": False,
        "scheduler.max_concurrent_sessions": max_sessions, "scheduler.max_batch_size": max_batch,
        "scheduler.max_context_tokens": 1024, "scheduler.max_pending_sessions": 4 * max_sessions,
        "model.quantization": quantization, **overrides,
    })
    run = dict(load_config_overrides=overrides)
    settings = [{}] + [_typed_values(variant) for variant in live_variants]
    base_values = {key: _setting(config, key)
                   for key in {"scheduler.adaptive_chunks", *(k for variant in settings for k in variant)}}

    class StepSizes(EngineObserver):
        def __init__(self):
            self.steps = []

        def on_step(self, seconds, decode_batch, prefill_batch, stats):
            self.steps.append((seconds, decode_batch, prefill_batch))

    observer = StepSizes()
    t = time.time()
    engine = Engine.from_config(config, observer=observer).start()
    await asyncio.to_thread(engine.warm_up)
    run["engine_start_s"] = time.time() - t
    target = EngineTarget(config)
    target.engine = engine
    if len(settings) > 1:
        run["same_seed_stream_vs_configured"] = await _same_seed_streams(engine, settings, base_values, DEFAULT_TEXT)
    rows: list[list[dict]] = [[] for _ in settings]
    for n in levels:
        for index, variant in enumerate(settings):
            _apply_live(engine.config, {**base_values, **variant})
            label = "".join(f" {key}={value}" for key, value in {**overrides, **variant}.items())
            rows[index].append(await _measure_level(engine, target, observer, n, requests, label, DEFAULT_TEXT))
    _apply_live(engine.config, base_values)
    run.update(engine_load=rows[0], gpu_memory_allocated_gb=torch.cuda.memory_allocated() / 1e9,
               gpu_memory_reserved_gb=torch.cuda.memory_reserved() / 1e9)
    run["live_variants"] = [dict(load_config_overrides={k: str(v) for k, v in variant.items()},
                                 same_engine=True, engine_load=variant_rows)
                            for variant, variant_rows in zip(settings[1:], rows[1:])]
    engine.stop()
    return run


async def _same_seed_streams(engine, settings, base_values, text) -> list[dict]:
    """One stream with a fixed seed under each setting (chunk joins fixed, so only the setting
    differs): whether its audio equals the configured engine's, sample for sample."""
    from orpheus_tts.engine.session import AudioChunk

    audio = []
    for variant in settings:
        _apply_live(engine.config, {**base_values, "scheduler.adaptive_chunks": False, **variant})
        request = engine.make_request(text, seed=7, ignore_end_of_speech=True)
        audio.append(np.concatenate([e.samples async for e in engine.synthesize(request) if isinstance(e, AudioChunk)]))
    _apply_live(engine.config, base_values)
    rows = []
    for variant, samples in zip(settings[1:], audio[1:]):
        same_length = samples.shape == audio[0].shape
        rows.append(dict(load_config_overrides={k: str(v) for k, v in variant.items()}, samples=int(samples.size),
                         identical=bool(same_length and np.array_equal(samples, audio[0])),
                         max_abs_difference=float(np.abs(samples - audio[0]).max()) if same_length else None))
        log(f"same seed, one stream, {rows[-1]['load_config_overrides']}: identical audio {rows[-1]['identical']}")
    return rows


class GcPauses:
    """Python garbage collections while a level runs: the engine thread stops for each one."""

    def __init__(self):
        self.pauses: list[tuple[int, float, int]] = []  # (generation, seconds, objects freed)
        self._started = None
        gc.callbacks.append(self)

    def __call__(self, phase, info) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses.append((info["generation"], time.perf_counter() - self._started, info["collected"]))
            self._started = None

    def summary(self) -> dict:
        """Pauses, and what lives in the oldest generation (not frozen at start-up): the objects
        a full collection walks."""
        seconds = [s for _, s, _ in self.pauses]
        oldest = collections.Counter(type(o).__name__ for o in gc.get_objects(generation=2))
        full = [dict(pause_ms=s * 1e3, objects_freed=n) for g, s, n in self.pauses if g == 2]
        return dict(collections=len(seconds), full_collections=len(full), full=full,
                    pause_max_ms=max(seconds, default=0.0) * 1e3, pause_total_ms=sum(seconds) * 1e3,
                    oldest_generation_objects=sum(oldest.values()), oldest_generation_types=dict(oldest.most_common(12)))


async def _measure_level(engine, target, observer, n, requests, label, text) -> dict:
    from orpheus_tts.loadbench import Progress, run_level

    observer.steps = []
    pauses = GcPauses()
    before = dataclasses.replace(engine.timings)
    torch.cuda.reset_peak_memory_stats()
    row = await run_level(target.stream, n, requests, text, 1.0, Progress(), f"concurrency {n}")
    after = engine.timings
    spent = {f.name: getattr(after, f.name) - getattr(before, f.name) for f in dataclasses.fields(after)}
    spent["host_s"] = after.host_s - before.host_s
    steps = np.array(observer.steps) if observer.steps else np.zeros((1, 3))
    busy = max(spent["step_s"], 1e-9)
    row.update(
        steps=int(spent["steps"]), step_ms_mean=spent["step_s"] / max(spent["steps"], 1) * 1e3,
        decode_batch_mean=float(steps[:, 1].mean()), engine_busy_share=busy / row["wall_s"],
        prefill_steps=int((steps[:, 2] > 0).sum()),
        time_share=dict(prefill=spent["prefill_s"] / busy, decode=spent["decode_s"] / busy,
                        snac_launch=spent["snac_launch_s"] / busy, snac_wait=spent["snac_wait_s"] / busy,
                        host_other=spent["host_s"] / busy),
        gpu_memory_peak_gb=torch.cuda.max_memory_allocated() / 1e9,
        step_ms_percentiles={q: float(np.percentile(steps[:, 0], q)) * 1e3 for q in (50, 99, 100)},
        python_gc=pauses.summary(),
        step_fit=dict(fixed_ms=engine.step_cost.predict(0) * 1e3,  # the engine's step-time line now
                      per_row_us=(engine.step_cost.predict(100) - engine.step_cost.predict(0)) * 1e4),
    )
    gc.callbacks.remove(pauses)
    share = row["time_share"]
    log(f"engine{label} concurrency {n}: TTFB p50 {row['ttfb_p50_ms']:.0f} p95 {row['ttfb_p95_ms']:.0f} "
        f"p99 {row['ttfb_p99_ms']:.0f} ms, real-time {row['realtime_share']:.2f} (stall p50 {row['stall_p50_ms'] or 0:.0f} "
        f"max {row['stall_max_ms'] or 0:.0f} ms), {row['tokens_per_s']:.0f} tok/s, "
        f"success {row['success_rate']:.2f}, audio {row['mean_audio_s']:.2f} s, step {row['step_ms_mean']:.1f} ms "
        f"(batch {row['decode_batch_mean']:.0f}; decode {share['decode']:.0%}, prefill {share['prefill']:.0%}, "
        f"SNAC launch {share['snac_launch']:.0%} wait {share['snac_wait']:.0%}, host {share['host_other']:.0%}); "
        f"step p99 {row['step_ms_percentiles'][99]:.1f} max {row['step_ms_percentiles'][100]:.1f} ms, "
        f"stalls at {row['stall_at_s_p50'] or 0:.2f} s of audio (p50), Python GC: "
        f"{row['python_gc']['full_collections']} full, longest pause {row['python_gc']['pause_max_ms']:.0f} ms, "
        f"{row['python_gc']['oldest_generation_objects']} objects in the oldest generation; step fit "
        f"{row['step_fit']['fixed_ms']:.2f} ms + {row['step_fit']['per_row_us']:.1f} us a row, {row['prefill_steps']} prefills")
    return row


def load_runs(results, opts, overrides):
    """The load section: the engine as configured, then per `--variant` (an A/B in one call, on
    the same GPU): live settings on the same engine, level by level; others on a new engine."""
    levels = [int(x) for x in opts.levels.split(",")]
    variants = [dict([variant.split("=", 1)]) for variant in opts.variant]
    live = [v for v in variants if set(v) <= set(LIVE_KEYS)]
    run = lambda extra, live_variants=(): asyncio.run(engine_load(  # noqa: E731
        levels, opts.max_batch, opts.load_quantization, opts.requests, {**overrides, **extra}, live_variants))
    results.update(run({}, live))
    results["engine_load_variants"] = results.pop("live_variants")
    for variant in variants:
        if variant in live:
            continue
        gc.collect()
        torch.cuda.empty_cache()
        results["engine_load_variants"].append(run(variant))


def plots(results, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results["step_sweep"]:
        step_plot(results, out, plt)
    load_plot(results, out, plt)


def step_plot(results, out, plt):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in ("bf16", "fp8"):
        rows = [r for r in results["step_sweep"] if r["precision"] == label]
        for ctx in sorted({r["context"] for r in rows}):
            sel = [r for r in rows if r["context"] == ctx]
            axes[0].plot([r["batch"] for r in sel], [r["step_ms"] for r in sel], marker="o", label=f"{label} ctx {ctx}")
            axes[1].plot([r["batch"] for r in sel], [r["tokens_per_s"] for r in sel], marker="o", label=f"{label} ctx {ctx}")
    base = results.get("transformers_baseline", [])
    if base:
        axes[1].plot([r["batch"] for r in base], [r["tokens_per_s"] for r in base], marker="x", label="transformers")
    axes[0].axhline(1e3 / orpheus.TOKENS_PER_SECOND, color="red", ls="--", label="real-time limit (12.19 ms)")
    axes[0].set(xscale="log", xlabel="batch", ylabel="decode step (ms)", title="Decode step, Orpheus-3B")
    axes[1].set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s", title="Throughput")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "decode_step.png", dpi=120)


def load_plot(results, out, plt):
    if results.get("engine_load"):
        rows = results["engine_load"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        x = [r["concurrency"] for r in rows]
        for key in ("ttfb_p50_ms", "ttfb_p95_ms", "ttfb_p99_ms"):
            ax.plot(x, [r[key] for r in rows], marker="o", label=key)
        ax.set(xlabel="concurrent streams", ylabel="TTFB (ms)", title="In-engine load (H100)")
        ax2 = ax.twinx()
        ax2.plot(x, [r["realtime_share"] for r in rows], color="black", ls="--", marker="s", label="real-time share")
        ax2.set(ylabel="share of streams real-time", ylim=(0, 1.05))
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "engine_load.png", dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="random:orpheus-3b")
    parser.add_argument("--out", default="bench/results/run")
    parser.add_argument("--batches", default="1,8,16,32,64,128,256")
    parser.add_argument("--contexts", default="128,512,1024")
    parser.add_argument("--levels", default="1,16,64,128,200,256")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2, help="load: streams each closed-loop worker makes")
    parser.add_argument("--sections", default="sweep,snac,baseline,load",
                        help="what to run, in this order: any of sweep,snac,baseline,load")
    parser.add_argument("--skip", default="", help="sections to leave out")
    parser.add_argument("--precisions", default="bf16,fp8", help="sweep: bf16, fp8 or both")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="load: an engine config override, e.g. codec.compile=false")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="load: run it again with this override too (repeatable), e.g. "
                             "scheduler.overlap_steps=false (live settings reuse the running engine)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--load-quantization", default="auto")
    opts = parser.parse_args()
    skip = set(filter(None, opts.skip.split(",")))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = os.environ.get("GIT_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, git_commit=commit or "unknown",
                   command=" ".join(sys.argv), python=platform.python_version(), checks={}, graph_capture_s={},
                   eager_step_ms=[], step_sweep=[])
    batches = [int(b) for b in opts.batches.split(",")]
    contexts = [int(c) for c in opts.contexts.split(",")]

    def save():
        (out / "engine_bench.json").write_text(json.dumps(results, indent=2))

    results["copy_bandwidth_bytes_per_s"] = bw = copy_bandwidth()
    log(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    check_attention(results)
    log("checks", results["checks"])
    overrides = dict(item.split("=", 1) for item in opts.set)
    sections = {
        "sweep": lambda: sweeps(opts, results, batches, contexts, bw, save),
        "snac": lambda: snac_bench(results),
        "baseline": lambda: transformers_baseline(results, [1, 16, 64]),
        "load": lambda: load_runs(results, opts, overrides),
    }
    for name in opts.sections.split(","):
        if name in skip:
            continue
        started = time.time()
        try:  # one failing section must not cost the others' results
            sections[name]()
        except Exception:  # noqa: BLE001
            import traceback

            log(f"section {name} failed:\n{traceback.format_exc()}")
            results.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
        results.setdefault("section_s", {})[name] = time.time() - started
        gc.collect()
        torch.cuda.empty_cache()
        save()
    try:
        plots(results, out)
    except Exception as exc:  # noqa: BLE001 (matplotlib missing or a plot bug: keep the JSON)
        log(f"plots failed: {exc}")
    save()
    log(json.dumps(results["checks"], indent=1))


def sweeps(opts, results, batches, contexts, bw, save):
    model = load_model(opts.model, torch.device("cuda"), torch.bfloat16, max_positions=max(contexts) + 8)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, orpheus.VOCAB_SIZE, (4, 64), device="cuda")
    with torch.inference_mode():
        bf16_logits = prompt_logits(model, tokens)
    if opts.compile:
        compile_model(model)
    if "bf16" in opts.precisions:
        results["step_sweep"] += step_sweep(model, "bf16", batches, contexts, bw, results, max(contexts), opts.compile)
        save()
    results["fp8_scaling"] = quantize_to_fp8(model)
    fp8_matmul_accuracy(results)
    fp8_accuracy(bf16_logits, model, tokens, results)
    log("checks", results["checks"])
    if "fp8" in opts.precisions:
        results["step_sweep"] += step_sweep(model, "fp8", batches, contexts, bw, results, max(contexts), opts.compile)
        save()
    del model
    gc.collect()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
