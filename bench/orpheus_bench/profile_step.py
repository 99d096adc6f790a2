"""Where a decode step's and a prefill's GPU time goes: kernel times from the PyTorch profiler.

    python -m orpheus_bench.profile_step --out bench/results/h100-profile

Builds the Orpheus-3B shape with random weights (FP8 where the GPU has it, compiled as the
engine compiles it), captures the decode step and the prefill as the engine does, and for each
shape records: graph replay time, the host-visible step time (staging, replay, token
readback), and the sum of kernel times grouped by kernel, so the gap between the step and the
weight-read floor can be attributed (matmuls, attention, sampler, fused elementwise, gaps).
Reaches into `DecodeGraphs._graphs[bucket]`, `PrefillGraphs.lengths`, `.BATCHES`,
`._graphs[batch, length]`, `.run(prompts, ints, floats)`, and the codec's `_decode_codes(codes,
decoder)`, `compile()` and `graph_decoder`.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from orpheus_bench.results import command_line, header, log, write_json
from orpheus_bench.server_parts import (
    DecodeGraphs, PrefillGraphs, SnacCodec, compile_model, fp8_supported, load_model, quantize_to_fp8)
from orpheus_bench.synthetic import load_rows, synthetic_runner
from orpheus_bench.timing import cuda_time_ms


def kernel_table(fn, repeats: int = 5) -> list[dict]:
    """Per kernel name: total device time per call (us) and launches per call."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name]
            entry[0] += event.time_range.elapsed_us()
            entry[1] += 1
    rows = [dict(kernel=name[:160], us_per_call=t / repeats, launches_per_call=n / repeats)
            for name, (t, n) in totals.items()]
    return sorted(rows, key=lambda r: -r["us_per_call"])


def categorise(rows: list[dict]) -> dict[str, float]:
    cats: dict[str, float] = defaultdict(float)
    for r in rows:
        k = r["kernel"].lower()
        if "memcpy" in k or "memset" in k:
            cat = "copies"
        elif "decode_split" in k:
            cat = "attention"
        elif any(s in k for s in ("gemm", "sm90", "cutlass", "nvjet", "scaled_mm", "matmul", "xmma", "cublas")):
            cat = "matmul"
        elif "sort" in k or "scan" in k or "radix" in k or "cub" in k:
            cat = "sort_scan"
        elif k.startswith("triton"):
            cat = "triton_fused"
        else:
            cat = "other_aten"
        cats[cat] += r["us_per_call"]
    return dict(cats)


@torch.inference_mode()
def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m orpheus_bench.profile_step", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/profile")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--context", type=int, default=512)
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    results = dict(**header(device, command_line("orpheus_bench.profile_step", argv)), decode=[], prefill=[])
    batches = [int(b) for b in opts.batches.split(",")]
    model = load_model("random:orpheus-3b", device, torch.bfloat16, max_positions=1024)
    if fp8_supported(device):
        results["fp8_scaling"] = quantize_to_fp8(model)
    t = time.time()
    compile_model(model)
    runner = synthetic_runner(model, max(batches), 1024, compiled=True)
    graphs = DecodeGraphs(runner, max(batches))
    graphs.buckets = batches
    graphs.capture()
    results["decode_capture_s"] = time.time() - t
    rng = np.random.default_rng(0)
    for b in batches:
        graphs.run(load_rows(runner, b, opts.context))
        replay = cuda_time_ms(lambda: graphs._graphs[b].replay())  # noqa: SLF001
        slots = load_rows(runner, b, opts.context)
        for _ in range(3):
            graphs.run(slots).tolist()
        t = time.perf_counter()
        for _ in range(20):
            graphs.run(slots).tolist()
        step = (time.perf_counter() - t) / 20 * 1e3
        kernels = kernel_table(lambda: graphs._graphs[b].replay())  # noqa: SLF001
        busy = sum(r["us_per_call"] for r in kernels) / 1e3
        row = dict(batch=b, context=opts.context, replay_ms=replay, step_ms=step, kernel_busy_ms=busy,
                   categories_us=categorise(kernels), top_kernels=kernels[:30])
        results["decode"].append(row)
        log(f"decode b{b}: replay {replay:.2f} ms, step {step:.2f} ms, kernels busy {busy:.2f} ms")
        log("  categories (us):", {k: round(v) for k, v in row["categories_us"].items()})
        for r in kernels[:14]:
            log(f"   {r['us_per_call']:8.1f} us x{r['launches_per_call']:5.0f}  {r['kernel'][:110]}")
    del graphs
    t = time.time()
    prefill = PrefillGraphs(runner)
    prefill.lengths = [64]
    prefill.capture()
    results["prefill_capture_s"] = time.time() - t
    for b in (1, 8):
        prompts = [list(rng.integers(0, 128000, 40)) for _ in range(b)]
        # slot, prompt length, seed, counter, end-of-speech allowed
        ints = np.stack([np.arange(b), np.full(b, 40), rng.integers(0, 2**31, b), np.zeros(b), np.ones(b)]).astype(np.int64)
        floats = np.array([[0.6] * b, [0.8] * b, [1.1] * b], dtype=np.float32)
        bb = next(s for s in prefill.BATCHES if s >= b)
        prefill.run(prompts, ints, floats)
        replay = cuda_time_ms(lambda: prefill._graphs[bb, 64].replay())  # noqa: SLF001
        t = time.perf_counter()
        for _ in range(10):
            prefill.run(prompts, ints, floats).tolist()
        step = (time.perf_counter() - t) / 10 * 1e3
        kernels = kernel_table(lambda: prefill._graphs[bb, 64].replay())  # noqa: SLF001
        busy = sum(r["us_per_call"] for r in kernels) / 1e3
        results["prefill"].append(dict(batch=b, prompt_tokens=40, length_bucket=64, replay_ms=replay, step_ms=step,
                                       kernel_busy_ms=busy, categories_us=categorise(kernels),
                                       top_kernels=kernels[:30]))
        log(f"prefill b{b} len64: replay {replay:.2f} ms, step {step:.2f} ms, kernels busy {busy:.2f} ms")
        log("  categories (us):", {k: round(v) for k, v in categorise(kernels).items()})
        for r in kernels[:14]:
            log(f"   {r['us_per_call']:8.1f} us x{r['launches_per_call']:5.0f}  {r['kernel'][:110]}")
    write_json(out / "profile.json", results)
    del prefill, runner, model
    torch.cuda.empty_cache()
    results["snac"] = snac_profile()
    write_json(out / "profile.json", results)


def snac_profile() -> list[dict]:
    rows = []
    codec = SnacCodec.load("random", torch.device("cuda"), noise=False, dtype=torch.float16)
    for b in (16, 64, 256):
        frames = torch.randint(0, 4096, (b, 4, 7), device="cuda")
        ms = cuda_time_ms(lambda: codec._decode_codes(frames), iters=10, warmup=2)  # noqa: SLF001
        kernels = kernel_table(lambda: codec._decode_codes(frames), repeats=2)  # noqa: SLF001
        rows.append(dict(variant="eager_fp16", batch=b, window=4, ms=ms, categories_us=categorise(kernels),
                         top_kernels=kernels[:20]))
        log(f"SNAC eager fp16 b{b}: {ms:.2f} ms", {k: round(v) for k, v in categorise(kernels).items()})
        for r in kernels[:8]:
            log(f"   {r['us_per_call']:8.1f} us x{r['launches_per_call']:5.0f}  {r['kernel'][:110]}")
    check = torch.randint(0, 4096, (16, 4, 7), device="cuda")
    ref = codec._decode_codes(check)  # noqa: SLF001
    t = time.time()
    codec.compile()
    compiled = codec.graph_decoder
    for b in (16, 64, 256):
        frames = torch.randint(0, 4096, (b, 4, 7), device="cuda")
        codec._decode_codes(frames, compiled)  # noqa: SLF001
        ms = cuda_time_ms(lambda: codec._decode_codes(frames, compiled), iters=10, warmup=2)  # noqa: SLF001
        kernels = kernel_table(lambda: codec._decode_codes(frames, compiled), repeats=2)  # noqa: SLF001
        rows.append(dict(variant="compiled_fp16", batch=b, window=4, ms=ms, categories_us=categorise(kernels),
                         top_kernels=kernels[:20]))
        log(f"SNAC compiled fp16 b{b}: {ms:.2f} ms", {k: round(v) for k, v in categorise(kernels).items()})
        for r in kernels[:8]:
            log(f"   {r['us_per_call']:8.1f} us x{r['launches_per_call']:5.0f}  {r['kernel'][:110]}")
    got = codec._decode_codes(check, compiled)  # noqa: SLF001
    noise = (got.float() - ref.float()).pow(2).sum()
    rows.append(dict(variant="compiled_vs_eager_snr_db", value=float(10 * torch.log10(ref.float().pow(2).sum() / noise)),
                     compile_s=time.time() - t))
    log("SNAC compiled vs eager SNR dB", rows[-1])
    return rows


if __name__ == "__main__":
    main()
