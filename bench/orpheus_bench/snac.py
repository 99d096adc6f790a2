"""SNAC decode time per batch of windows (fp32, fp16, fp16 in CUDA graphs) on the real 24 kHz
config with random weights, and how far fp16 and graphs move the audio (SNR, max difference).

Reaches into `SnacCodec.load(..., noise=, dtype=)`, `.decode`, `.enable_graphs(frames, buckets)`,
`._graph_inputs` and `._decode_codes` (the eager decode, the graphs' reference).
"""

from __future__ import annotations

import torch

from orpheus_bench.results import log
from orpheus_bench.server_parts import SnacCodec, batch_buckets
from orpheus_bench.timing import cuda_time_ms


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
    codec16.enable_graphs(4, batch_buckets(256))
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
