"""Decode attention over the slot KV cache that reads only each session's real length.

On CUDA a Triton split-K kernel (flash-decoding): program (row, kv head, split) reads keys
[split * SPLIT_TOKENS, min(length, (split + 1) * SPLIT_TOKENS)) of the row's slot and exits at
once past the row's length, so the bytes read follow the real lengths; partial results are
merged with their log-sum-exp. The merge is plain tensor code outside the kernel's operator, so
`torch.compile` fuses it with what follows (the output projection's input cast): inside the
operator it was four unfused kernels per layer (0.35 ms of a batch-64 step). Lengths live in a
device tensor, so one CUDA graph serves every mix of lengths. Over an FP8 cache
(`engine/kv_cache.py`) it reads float8 keys and values, half the bytes, and applies their
per-vector scales to the scores and to the weights of the values. Elsewhere (CPU) a masked `scaled_dot_product_attention` up to the longest
length in the batch gives the same result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from orpheus_tts.model import fp8_gemm

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs need not have Triton
    triton = None

if TYPE_CHECKING:
    from orpheus_tts.model.kv_layer import LayerKV

# The kernel's launch shape, from `python -m orpheus_bench.attention_tune` on the H200
# (bench/results/h200-attention-tune/): splits of 512 tokens past 32 rows (of 256 the 16-bit
# kernel took 15% longer at 512 rows of 1,024 tokens), and blocks of 128 tokens over an FP8
# cache (of 64 it took 18-40% longer: one block's bytes are half a 16-bit block's). Up to 32 rows
# the splits stay at 256, so a short batch still spreads over the GPU (not measured); the bound
# is the FP8 matmul's (`fp8_gemm.MAX_ROWS`), so the compiled block keeps the variants it has.
SPLIT_TOKENS, SPLIT_TOKENS_FEW_ROWS, FEW_ROWS = 512, 256, fp8_gemm.MAX_ROWS
BLOCK_N, BLOCK_N_FP8 = 64, 128


def split_tokens(rows: int) -> int:
    return SPLIT_TOKENS if rows > FEW_ROWS else SPLIT_TOKENS_FEW_ROWS


def triton_available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _decode_split_kernel(
        q_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, slots_ptr, lengths_ptr, out_ptr, lse_ptr,
        stride_qb, stride_qh,
        stride_cs, stride_ch, stride_ct,
        stride_ss, stride_sh,
        stride_ob, stride_oh, stride_os,
        stride_lb, stride_lh,
        sm_scale,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
        SPLIT: tl.constexpr, BLOCK: tl.constexpr, SCALED: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(lengths_ptr + row)
        start = split * SPLIT
        heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
        head_ok = tl.arange(0, GROUP_PAD) < GROUP
        dims = tl.arange(0, HEAD_DIM)
        if start >= length:
            # Nothing to read here: a zero result that the merge weighs as zero.
            tl.store(out_ptr + row * stride_ob + heads[:, None] * stride_oh + split * stride_os + dims[None, :],
                     tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32), mask=head_ok[:, None])
            tl.store(lse_ptr + row * stride_lb + heads * stride_lh + split, float("-inf"), mask=head_ok)
            return
        slot = tl.load(slots_ptr + row).to(tl.int64)
        q = tl.load(q_ptr + row * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                    mask=head_ok[:, None], other=0.0)
        base = slot * stride_cs + kv_head * stride_ch
        scale_base = slot * stride_ss + kv_head * stride_sh
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        denom = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        end = tl.minimum(length, start + SPLIT)
        for block_start in range(start, end, BLOCK):
            offs = block_start + tl.arange(0, BLOCK)
            valid = offs < end
            k = tl.load(k_ptr + base + offs[:, None] * stride_ct + dims[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + base + offs[:, None] * stride_ct + dims[None, :], mask=valid[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k.to(q.dtype))).to(tl.float32) * sm_scale
            if SCALED:  # FP8 cache: q . (k * s) = (q . k) * s, and sum p (v * s) = sum (p * s) v
                scores *= tl.load(k_scale_ptr + scale_base + offs, mask=valid, other=0.0)[None, :]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            denom = denom * alpha + tl.sum(p, axis=1)
            if SCALED:
                p_v = p * tl.load(v_scale_ptr + scale_base + offs, mask=valid, other=0.0)[None, :]
            else:
                p_v = p
            acc = acc * alpha[:, None] + tl.dot(p_v.to(q.dtype), v.to(q.dtype)).to(tl.float32)
            m = m_new
        out = acc / denom[:, None]
        tl.store(out_ptr + row * stride_ob + heads[:, None] * stride_oh + split * stride_os + dims[None, :],
                 out, mask=head_ok[:, None])
        tl.store(lse_ptr + row * stride_lb + heads * stride_lh + split, m + tl.log(denom), mask=head_ok)


def decode_attention(q: Tensor, cache: LayerKV, slots: Tensor, lengths: Tensor) -> Tensor:
    """q: [B, H, D] (one new token per row); the layer's cache [S, Hkv, T, D]; lengths include
    the new token.

    Returns [B, H, D] in q's dtype.
    """
    if triton_available(q.device):
        compute = torch.bfloat16 if cache.quantized else cache.k.dtype
        partial, lse = triton_decode_attention_splits(q.to(compute).contiguous(), cache.k, cache.v, slots, lengths,
                                                      cache.k_scale, cache.v_scale)
        return merge_splits(partial, lse).to(q.dtype)
    return decode_attention_reference(q, cache, slots, lengths)


def merge_splits(partial: Tensor, lse: Tensor) -> Tensor:
    """The splits' outputs [B, H, S, D] weighed by their log-sum-exps [B, H, S]: [B, H, D] fp32."""
    weights = torch.softmax(lse, dim=-1)  # splits past the length have lse -inf: weight 0
    return (partial * weights[..., None]).sum(dim=2)


def decode_attention_reference(q: Tensor, cache: LayerKV, slots: Tensor, lengths: Tensor) -> Tensor:
    keys, values = cache.read(slots, int(lengths.max()), q.dtype)
    mask = (torch.arange(keys.shape[2], device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None, :], keys, values, attn_mask=mask, enable_gqa=True)
    return out[:, :, 0, :]


@torch.library.custom_op("orpheus::decode_attention_splits", mutates_args=())
def triton_decode_attention_splits(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor,
                                   k_scale: Tensor | None = None,
                                   v_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The Triton kernel as an opaque operator: per split, the attention output [B, H, S, D] and
    its log-sum-exp [B, H, S] (fp32). q must be contiguous, in the cache's dtype (bf16 over an
    FP8 cache, whose per-vector scales [S, Hkv, T] come as `k_scale` and `v_scale`)."""
    return launch_splits(q.contiguous(), k_cache, v_cache, slots, lengths, k_scale, v_scale)  # head_dim at stride 1


def launch_splits(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor,
                  k_scale: Tensor | None = None, v_scale: Tensor | None = None, split: int | None = None,
                  block: int | None = None, **launch) -> tuple[Tensor, Tensor]:
    """One launch of the kernel: the server's shape (`split_tokens`, `BLOCK_N` / `BLOCK_N_FP8`)
    unless `split`, `block` and Triton's `launch` options (num_warps, num_stages) say otherwise,
    as `orpheus_bench.attention_tune` does to choose that shape."""
    bsz, n_heads, head_dim = q.shape
    n_slots, n_kv_heads, max_tokens, _ = k_cache.shape
    group = n_heads // n_kv_heads
    scaled = k_scale is not None
    split = split or split_tokens(bsz)
    n_splits = triton.cdiv(max_tokens, split)
    partial = torch.empty(bsz, n_heads, n_splits, head_dim, device=q.device, dtype=torch.float32)
    lse = torch.empty(bsz, n_heads, n_splits, device=q.device, dtype=torch.float32)
    scales = (k_scale, v_scale) if scaled else (lse, lse)  # never read unscaled: any pointer will do
    _decode_split_kernel[(bsz, n_kv_heads, n_splits)](
        q, k_cache, v_cache, *scales, slots, lengths, partial, lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        scales[0].stride(0), scales[0].stride(1),
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        1.0 / math.sqrt(head_dim),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        SPLIT=split, BLOCK=block or (BLOCK_N_FP8 if scaled else BLOCK_N), SCALED=scaled, **launch,
    )
    return partial, lse


@triton_decode_attention_splits.register_fake
def _(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor, k_scale: Tensor | None = None,
      v_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    bsz, n_heads, head_dim = q.shape
    n_splits = -(-k_cache.shape[2] // split_tokens(bsz))
    return (q.new_empty(bsz, n_heads, n_splits, head_dim, dtype=torch.float32),
            q.new_empty(bsz, n_heads, n_splits, dtype=torch.float32))
