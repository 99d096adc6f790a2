"""A Triton FP8 matmul for the decode step's few rows: split-K so every SM streams weights.

cuBLAS picks 128x128 tiles for FP8 at 1-64 rows: a 3072-wide output is then 24 tiles on an
H100's 132 SMs, each walking all of K. Where K is long (the MLP down projection, 3072x8192)
that left cuBLAS at 39% of the copy bandwidth. Here each program multiplies a BLOCK_M x
BLOCK_N tile over one K split; splits are sized so the grid covers the GPU twice, and their
fp32 partial sums are added outside the kernel, where `torch.compile` fuses the sum with the
scales and the cast.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs need not have Triton
    triton = None

# Where the kernel beats cuBLAS, measured per shape on an H100 (`python -m orpheus_bench.fp8_gemm`,
# bench/results/h100-fp8-gemm/): only where K is longer than N, up to 32 rows (down projection:
# 13.6 against 21.8 us at 1 row, 17.7 against 21.8 at 32, even at 64). For the QKV, output and
# gate/up projections cuBLAS was faster at every row count but one (QKV at one row: 12.6
# against 13.5 us), by up to 1.5x at 16 rows.
MAX_ROWS = 32
BLOCK_N = 64
BLOCK_K = 256


def triton_fp8_available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


def k_splits(n: int, k: int, sms: int) -> int:
    """Splits of K (each a multiple of BLOCK_K) so that N tiles x splits covers the SMs twice."""
    tiles = max(n // BLOCK_N, 1)
    splits = 1
    while tiles * splits < 2 * sms and k % (2 * splits * BLOCK_K) == 0:
        splits *= 2
    return splits


if triton is not None:

    @triton.autotune(
        configs=[
            triton.Config({}, num_warps=4, num_stages=4),
            triton.Config({}, num_warps=4, num_stages=6),
            triton.Config({}, num_warps=8, num_stages=4),
        ],
        key=["BLOCK_M", "N", "K", "K_PER_SPLIT"],
    )
    @triton.jit
    def _fp8_matmul_kernel(
        x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_os, stride_om,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_PER_SPLIT: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = pid_s * K_PER_SPLIT + tl.arange(0, BLOCK_K)
        rows_ok = offs_m[:, None] < M
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K_PER_SPLIT, BLOCK_K):
            a = tl.load(x_ptrs, mask=rows_ok, other=0.0)
            b = tl.load(w_ptrs)
            acc = tl.dot(a, tl.trans(b), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        tl.store(out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :], acc, mask=rows_ok)


@torch.library.custom_op("orpheus::fp8_matmul_splits", mutates_args=())
def fp8_matmul_splits(x: Tensor, w: Tensor, splits: int) -> Tensor:
    """x [M, K] and w [N, K], both float8_e4m3fn and row-major: partial x @ w.T per K split,
    [splits, M, N] in fp32 (sum over dim 0 for the product)."""
    x, w = x.contiguous(), w.contiguous()  # the kernel steps along K with stride 1
    m, k = x.shape
    n = w.shape[0]
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    out = torch.empty(splits, m, n, device=x.device, dtype=torch.float32)
    grid = (n // BLOCK_N, triton.cdiv(m, block_m), splits)
    _fp8_matmul_kernel[grid](x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0), out.stride(1),
                             BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, K_PER_SPLIT=k // splits)
    return out


@fp8_matmul_splits.register_fake
def _(x: Tensor, w: Tensor, splits: int) -> Tensor:
    return x.new_empty(splits, x.shape[0], w.shape[0], dtype=torch.float32)


def fits(n: int, k: int) -> bool:
    """Shapes the kernel takes (whole tiles along N and K) and is faster for (K longer than N)."""
    return n % BLOCK_N == 0 and k % BLOCK_K == 0 and k > n
