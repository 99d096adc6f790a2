"""GPU timing the benches share: device-event medians and the copy bandwidth that bandwidth
use is measured against."""

from __future__ import annotations

import numpy as np
import torch


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
