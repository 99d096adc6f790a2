"""The decode attention kernel's launch shape, timed over a 16-bit and an FP8 KV cache.

    python -m orpheus_bench.attention_tune --out bench/results/h200-attention-tune [--batch 512] [--context 1024]

The H200 sweep had the FP8 cache's step slower than the 16-bit one's (17.8 against 13.5 ms at
batch 512, context 512) though it reads half the bytes: the kernel, not the memory, is the limit
there. One layer of the Orpheus-3B shape (24 query heads over 8 KV heads, head size 128), every
row at `--context` tokens: each (tokens per block, tokens per split, warps, stages), the bytes it
reads per second and its error against the reference attention, for a 16-bit cache and for an FP8
one computed in bf16 (the server's) and in fp16 (to which FP8 converts directly); per
case the shape the server launched before (64, 256, 4), the one it launches now and the best.
Uses `attention.launch_splits`, `merge_splits`, `BLOCK_N`, `BLOCK_N_FP8` and `split_tokens`.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from orpheus_bench.results import command_line, header, log, write_json
from orpheus_bench.server_parts import FP8, KVCache, attention, decode_attention_reference, relative_difference
from orpheus_bench.timing import cuda_time_ms


def launch(q, layer, slots, lengths, block: int, split: int, warps: int, stages: int | None):
    """One launch of the server's kernel with this shape, its splits merged as the server merges them."""
    extra = {"num_warps": warps} | ({"num_stages": stages} if stages else {})
    partial, lse = attention.launch_splits(q, layer.k, layer.v, slots, lengths, layer.k_scale, layer.v_scale,
                                           split=split, block=block, **extra)
    return attention.merge_splits(partial, lse)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--context", type=int, default=1024)
    args = p.parse_args()
    device = torch.device("cuda")
    results = dict(**header(device, command_line("orpheus_bench.attention_tune", None)), rows=[])
    torch.manual_seed(0)
    kv_heads, dim = 8, 128
    q = torch.randn(args.batch, 24, dim, device=device, dtype=torch.bfloat16)
    slots = torch.randperm(args.batch, device=device)
    lengths = torch.full((args.batch,), args.context, device=device)
    # (name, cache dtype, the dtype the kernel computes in: q's, to which each block is converted)
    cases = (("bf16", torch.bfloat16, torch.bfloat16), ("fp8", FP8, torch.bfloat16), ("fp8-fp16", FP8, torch.float16))
    layers = {}
    for name, dtype, compute in cases:
        if dtype not in layers:
            layers.clear()
            torch.cuda.empty_cache()
            layer = layers[dtype] = KVCache(1, args.batch, kv_heads, args.context, dim, dtype, device).layers[0]
            every = torch.arange(args.context, device=device)
            for slot in range(args.batch):
                layer.write(torch.full_like(every, slot), every, torch.randn(args.context, kv_heads, dim, device=device),
                            torch.randn(args.context, kv_heads, dim, device=device))
        layer, qc = layers[dtype], q.to(compute)
        want = decode_attention_reference(q.float(), layer, slots, lengths)
        nbytes = args.batch * args.context * kv_heads * dim * 2 * layer.k.element_size()
        if layer.quantized:
            nbytes += args.batch * args.context * kv_heads * 2 * 4
        for block, split, warps, stages in itertools.product((64, 128), (128, 256, 512), (4, 8), (None, 3)):
            try:
                got = launch(qc, layer, slots, lengths, block, split, warps, stages)
                ms = cuda_time_ms(lambda: launch(qc, layer, slots, lengths, block, split, warps, stages), iters=10)
            except Exception as exc:  # noqa: BLE001 (a shape Triton cannot build: recorded, not fatal)
                results["rows"].append(dict(cache=name, block=block, split=split, warps=warps, stages=stages,
                                            error=str(exc)[:200]))
                continue
            row = dict(cache=name, block=block, split=split, warps=warps, stages=stages, ms=ms,
                       bandwidth_tb_s=nbytes / (ms / 1e3) / 1e12, rel_err=relative_difference(got, want))
            results["rows"].append(row)
            log(f"{name} block {block:3d} split {split:3d} warps {warps} stages {stages}: {ms:.3f} ms, "
                f"{row['bandwidth_tb_s']:.2f} TB/s, err {row['rel_err']:.1e}")
        timed = {(r["block"], r["split"], r["warps"], r["stages"]): r for r in results["rows"]
                 if r["cache"] == name and "ms" in r}
        now = (attention.BLOCK_N_FP8 if layer.quantized else attention.BLOCK_N, attention.split_tokens(args.batch), 4,
               None)
        results[name] = dict(before=timed.get((64, 256, 4, None)), server=timed.get(now),
                             best=min(timed.values(), key=lambda r: r["ms"]))
        log(f"{name}: {results[name]}")
    write_json(Path(args.out) / f"batch{args.batch}-context{args.context}.json", results)


if __name__ == "__main__":
    main()
