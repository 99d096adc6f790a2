"""One layer's KV cache storage and how it is written and read, in 16 bits or FP8.

The cache as a whole (slots, their allocation, one `LayerKV` per layer) is the engine's
(`engine/kv_cache.py`); the model's attention writes and reads a layer through this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from orpheus_tts.model.fp8 import FP8, FP8_MAX


@dataclass
class LayerKV:
    """One layer's keys and values, [n_slots + 1, n_kv_heads, max_tokens, head_dim].

    In an FP8 cache (`k.dtype` float8_e4m3fn) each token's key and value vector of each head is
    stored scaled to the format's range, with its scale beside it (`k_scale`, `v_scale`:
    [n_slots + 1, n_kv_heads, max_tokens], fp32): a per-vector scale keeps a layer's or a head's
    outliers from flattening every other vector, for 4 bytes per 128. The cache is then half the
    bytes that a decode step reads, which is what limits the step at a large batch.
    """

    k: Tensor
    v: Tensor
    k_scale: Tensor | None = None
    v_scale: Tensor | None = None

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    def write(self, slots: Tensor, positions: Tensor, k: Tensor, v: Tensor) -> None:
        """Store new tokens' keys and values ([N, n_kv_heads, head_dim]) at (slot, position) pairs."""
        if self.quantized:
            self.k[slots, :, positions], self.k_scale[slots, :, positions] = quantize_fp8(k)
            self.v[slots, :, positions], self.v_scale[slots, :, positions] = quantize_fp8(v)
        else:
            self.k[slots, :, positions] = k.to(self.k.dtype)
            self.v[slots, :, positions] = v.to(self.v.dtype)

    def read(self, slots: Tensor, kv_len, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Each row's first `kv_len` keys and values, [B, n_kv_heads, kv_len, head_dim], in `dtype`."""
        keys, values = self.k[slots, :, :kv_len].to(dtype), self.v[slots, :, :kv_len].to(dtype)
        if self.quantized:
            keys = keys * self.k_scale[slots, :, :kv_len, None].to(dtype)
            values = values * self.v_scale[slots, :, :kv_len, None].to(dtype)
        return keys, values

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None)


def quantize_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., D] as float8_e4m3fn with one fp32 scale per vector: x ~ q * scale."""
    scale = (x.float().abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
    q = (x.float() / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale
