"""Which FP8 matmul serves which layer: choices the H100 measurements made, and the CPU fallback."""

import torch

from orpheus_tts.model import fp8_gemm
from orpheus_tts.model.fp8 import fp8_supported


def test_the_split_k_kernel_serves_only_the_long_k_projection():
    # Orpheus-3B's layer shapes (N, K): only the MLP down projection was faster than cuBLAS.
    assert fp8_gemm.fits(3072, 8192)  # w2
    assert not fp8_gemm.fits(5120, 3072)  # wqkv
    assert not fp8_gemm.fits(3072, 3072)  # wo
    assert not fp8_gemm.fits(16384, 3072)  # w13 (gate and up)
    assert not fp8_gemm.fits(3000, 8192) and not fp8_gemm.fits(3072, 8000)  # partial tiles


def test_cpu_has_neither_fp8_weights_nor_the_triton_kernel():
    cpu = torch.device("cpu")
    assert not fp8_supported(cpu) and not fp8_gemm.triton_fp8_available(cpu)
