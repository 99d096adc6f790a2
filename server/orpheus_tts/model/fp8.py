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
    """Drop-in for a bias-free `nn.Linear` whose weight is stored in FP8 with its scales.

    `weight_fp8` is [N, K] row-major (its `.t()` is the column-major operand `_scaled_mm` wants);
    `weight_scale` is [1, N] (row-wise: one per output channel) or a scalar (per tensor). Built by
    `quantize` from a linear layer, or straight from saved buffers (an engine's serving weights).
    """

    def __init__(self, weight_fp8: Tensor, weight_scale: Tensor, triton_rows: bool = True):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.rowwise = weight_scale.dim() > 0
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.splits = 0
        self.use_triton_rows(triton_rows)

    @classmethod
    def quantize(cls, linear: nn.Linear, rowwise: bool, triton_rows: bool = True) -> "Fp8Linear":
        w = linear.weight.detach().float()
        amax = w.abs().amax(dim=1, keepdim=True) if rowwise else w.abs().amax()
        scale = (amax / FP8_MAX).clamp(min=1e-12)
        return cls((w / scale).to(FP8), scale.reshape(1, -1) if rowwise else scale.reshape(()), triton_rows)

    def use_triton_rows(self, enabled: bool) -> None:
        """Whether few-row matmuls (decode) go to the split-K Triton kernel (see fp8_gemm)."""
        device = self.weight_fp8.device
        use = (enabled and fp8_gemm.triton_fp8_available(device)
               and fp8_gemm.fits(self.out_features, self.in_features))
        sms = torch.cuda.get_device_properties(device).multi_processor_count if use else 0
        self.splits = fp8_gemm.k_splits(self.out_features, self.in_features, sms) if use else 0

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


def rowwise_works(device: torch.device) -> bool:
    """Row-wise scaled FP8 matmul needs Hopper-class support in this torch build; try it once."""
    try:
        probe = Fp8Linear.quantize(nn.Linear(32, 32, bias=False).to(device), rowwise=True)
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
        fast = Fp8Linear.quantize(linear, rowwise, triton_rows=True)
        reference = Fp8Linear.quantize(linear, rowwise, triton_rows=False)
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


def fp8_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (parent, attribute) of every linear layer FP8 applies to: the blocks' projections."""
    return [(parent, name) for block in model.layers
            for parent, name in ((block.attention, "wqkv"), (block.attention, "wo"),
                                 (block.feed_forward, "w13"), (block.feed_forward, "w2"))]


def is_fp8(model: nn.Module) -> bool:
    return any(isinstance(getattr(parent, name), Fp8Linear) for parent, name in fp8_layers(model))


def quantize_to_fp8(model: nn.Module, rowwise: bool | None = None) -> str:
    """Replace the transformer blocks' linear layers by FP8 ones in place; returns the scaling
    used and whether the decode's few-row matmuls use the Triton kernel.

    `rowwise` None probes the device; the engine builder passes its choice when it quantises
    on a machine without the target GPU."""
    device = next(model.parameters()).device
    if rowwise is None:
        rowwise = rowwise_works(device)
    triton_rows = device.type == "cuda" and _triton_rows_work(device, rowwise)
    for parent, name in fp8_layers(model):
        setattr(parent, name, Fp8Linear.quantize(getattr(parent, name), rowwise, triton_rows))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return describe_fp8(rowwise, triton_rows)


def prepare_fp8(model: nn.Module) -> str:
    """For FP8 weights loaded as they were saved: pick the few-row matmul kernel on this GPU."""
    layers = [getattr(parent, name) for parent, name in fp8_layers(model)]
    rowwise = layers[0].rowwise
    triton_rows = _triton_rows_work(layers[0].weight_fp8.device, rowwise)
    for layer in layers:
        layer.use_triton_rows(triton_rows)
    return describe_fp8(rowwise, triton_rows)


def describe_fp8(rowwise: bool, triton_rows: bool) -> str:
    return ("rowwise" if rowwise else "tensorwise") + (" scales, Triton few-row matmuls" if triton_rows else " scales")
