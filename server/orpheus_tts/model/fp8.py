"""FP8 (e4m3) weights for the transformer's matmuls, through `torch._scaled_mm`.

A decode step is bound by reading the weights, so halving their bytes nearly halves the step.
Weights are quantised once with a scale per output channel; activations are quantised on the
fly with a scale per row (token). Where the GPU or this torch build lacks row-wise scaling, one
scale per tensor is used instead. Only GPUs with FP8 tensor cores (Ada sm_89, Hopper sm_90 and
newer) qualify; elsewhere the model keeps bf16/fp32 weights. Embeddings, norms and the output
head stay in the model dtype: they are a small share of the bytes and matter most for accuracy.
Where cuBLAS's tiles leave SMs idle (K longer than N: the MLP down projection) and up to
`fp8_gemm.MAX_ROWS` rows (decode steps), the matmul is our split-K Triton kernel (see
fp8_gemm); everywhere else, `torch._scaled_mm`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from orpheus_tts.model import fp8_gemm

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448

# The first CUDA compute capability with FP8 tensor cores (Ada sm_89); Hopper sm_90 and every
# later GPU have them too. The engine builder and the operator read this value, not their own.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


def fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_COMPUTE_CAPABILITY


class Fp8Linear(nn.Module):
    """Drop-in for a bias-free `nn.Linear` whose weight is stored in FP8."""

    def __init__(self, linear: nn.Linear, rowwise: bool, triton_rows: bool = True):
        super().__init__()
        weight = linear.weight.detach()
        self.out_features, self.in_features = weight.shape
        self.rowwise = rowwise
        w = weight.float()
        amax = w.abs().amax(dim=1, keepdim=True) if rowwise else w.abs().amax()
        scale = (amax / FP8_MAX).clamp(min=1e-12)
        self.register_buffer("weight_fp8", (w / scale).to(FP8))  # [N, K] row-major; .t() is column-major
        self.register_buffer("weight_scale", scale.reshape(1, -1) if rowwise else scale.reshape(()))
        device = weight.device
        use_triton = (triton_rows and fp8_gemm.triton_fp8_available(device)
                      and fp8_gemm.fits(self.out_features, self.in_features))
        sms = torch.cuda.get_device_properties(device).multi_processor_count if use_triton else 0
        self.splits = fp8_gemm.k_splits(self.out_features, self.in_features, sms) if use_triton else 0

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.rowwise:
            x_scale = (x2.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
        else:
            x_scale = (x2.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
        xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        if self.splits and x2.shape[0] <= fp8_gemm.MAX_ROWS:
            partial = fp8_gemm.fp8_matmul_splits(xq, self.weight_fp8, self.splits)
            out = (partial.sum(0) * x_scale * self.weight_scale).to(x.dtype)
            return out.reshape(*shape[:-1], self.out_features)
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               out_dtype=x.dtype)
        return out.reshape(*shape[:-1], self.out_features)


def _rowwise_works(device: torch.device) -> bool:
    """Row-wise scaled FP8 matmul needs Hopper-class support in this torch build; try it once."""
    try:
        probe = Fp8Linear(nn.Linear(32, 32, bias=False).to(device), rowwise=True)
        probe(torch.randn(16, 32, device=device, dtype=torch.bfloat16))
        return True
    except RuntimeError as exc:
        log.info("row-wise FP8 scaling unavailable (%s); using per-tensor scales", exc)
        return False


def _triton_rows_work(device: torch.device, rowwise: bool) -> bool:
    """The Triton kernel must compile here and agree with `_scaled_mm`; otherwise cuBLAS only."""
    if not fp8_gemm.triton_fp8_available(device):
        return False
    try:
        linear = nn.Linear(512, 256, bias=False).to(device)
        fast, reference = Fp8Linear(linear, rowwise, triton_rows=True), Fp8Linear(linear, rowwise, triton_rows=False)
        err = 0.0
        for rows in (1, fp8_gemm.MAX_ROWS):  # the fewest and the most rows it is used for
            x = torch.randn(rows, 512, device=device, dtype=torch.bfloat16)
            want = reference(x).float()
            err = max(err, float((fast(x).float() - want).norm() / want.norm()))
        if err < 1e-2:
            return True
        log.warning("Triton FP8 matmul disagrees with cuBLAS (rel. error %.3g); using cuBLAS", err)
    except Exception as exc:  # noqa: BLE001 (a compiler or driver error: fall back, do not fail start-up)
        log.warning("Triton FP8 matmul unavailable (%s); using cuBLAS", exc)
    return False


def quantize_to_fp8(model: nn.Module) -> str:
    """Replace the transformer blocks' linear layers by FP8 ones in place; returns the scaling
    used and whether the decode's few-row matmuls use the Triton kernel."""
    device = next(model.parameters()).device
    rowwise = _rowwise_works(device)
    triton_rows = _triton_rows_work(device, rowwise)
    for block in model.layers:
        for parent, name in ((block.attention, "wqkv"), (block.attention, "wo"),
                             (block.feed_forward, "w13"), (block.feed_forward, "w2")):
            setattr(parent, name, Fp8Linear(getattr(parent, name), rowwise, triton_rows))
    torch.cuda.empty_cache()
    return ("rowwise" if rowwise else "tensorwise") + (" scales, Triton few-row matmuls" if triton_rows else " scales")
