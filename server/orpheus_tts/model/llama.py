"""The Orpheus language model: a compact Llama (GQA, RMSNorm, llama3 RoPE scaling).

Q/K/V and gate/up are fused into one matmul each (`wqkv`, `w13`); the loader fuses Hugging
Face's separate tensors, so checkpoints stay in their own format. One `forward` serves prefill
and decode for a whole batch: every row is a session with its own KV slot and its own start
position, and each query attends to its own session's cached keys only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orpheus_tts import orpheus
from orpheus_tts.model.attention import decode_attention

if TYPE_CHECKING:
    from orpheus_tts.model.kv_layer import LayerKV
    from orpheus_tts.model.lora import LoraPool


@dataclass
class ModelArgs:
    vocab_size: int = orpheus.VOCAB_SIZE
    dim: int = 3072
    n_layers: int = 28
    n_heads: int = 24
    n_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 8192
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    rope_scaling: dict | None = field(
        default_factory=lambda: {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    )
    tie_word_embeddings: bool = True

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        if name not in NAMED_CONFIGS:
            raise ValueError(f"unknown model config {name!r}; known: {sorted(NAMED_CONFIGS)}")
        return cls(**NAMED_CONFIGS[name])

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        """Read a Hugging Face `LlamaConfig` dict; refuse shapes this model does not implement."""
        if cfg.get("model_type", "llama") != "llama":
            raise ValueError(f"expected a llama checkpoint, got model_type={cfg.get('model_type')!r}")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("checkpoints with attention or MLP biases are not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {cfg.get('hidden_act')!r}")
        n_heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
            intermediate_size=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10_000.0)),
            rope_scaling=cfg.get("rope_scaling") or _rope_scaling_from_parameters(cfg.get("rope_parameters")),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies in a 2-byte (fp16/bf16) cache."""
        return self.n_layers * self.n_kv_heads * self.head_dim * 2 * 2


def _rope_scaling_from_parameters(params: dict | None) -> dict | None:
    """transformers >= 5 stores rope scaling under `rope_parameters` (with `rope_type`)."""
    if not params or params.get("rope_type", "default") == "default":
        return None
    return {k: v for k, v in params.items() if k != "rope_theta"}


NAMED_CONFIGS = {
    "orpheus-3b": {},
    # Tiny dims, but the real vocabulary and special ids, so every code path is the real one.
    "demo": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "intermediate_size": 128},
}


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse frequencies with Llama 3's long-context scaling applied (as in Hugging Face)."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim))
    scaling = args.rope_scaling
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "llama3":
        return inv_freq.float()
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled).float()


def rope_table(args: ModelArgs, max_positions: int) -> Tensor:
    """[max_positions, head_dim // 2, 2] (cos, sin), computed once in fp32."""
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), rope_inv_freq(args))
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE (the Hugging Face layout). x: [B, H, L, D]; cos, sin: [B, 1, L, D/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        self.layer_id = layer_id
        self.lora: "LoraPool | None" = None  # set by `Transformer.attach_lora`, with this layer's part of it:
        self.lora_weights: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = {}  # tensors, not an index (see attach_lora)
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        qkv_dim = (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        self.wqkv = nn.Linear(args.dim, qkv_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, batch: "AttentionBatch", cache: "LayerKV") -> Tensor:
        bsz, seqlen, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qkv = self.wqkv(x)
        if self.lora is not None and batch.adapters is not None:
            qkv = qkv + self.lora.delta(self.lora_weights["wqkv"], x, batch.adapters).to(qkv.dtype)
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, batch.cos, batch.sin), apply_rope(k, batch.cos, batch.sin)

        # Write the new keys/values into each session's slot at its own positions, then read
        # back each session's cache up to the longest real length in the batch.
        cache.write(batch.write_slots, batch.write_positions,
                    k.transpose(1, 2).reshape(-1, self.n_kv_heads, self.head_dim),
                    v.transpose(1, 2).reshape(-1, self.n_kv_heads, self.head_dim))
        if batch.decode_lengths is not None:
            out = decode_attention(q[:, :, 0], cache, batch.slots, batch.decode_lengths).reshape(bsz, 1, q_size)
        else:
            kv_len = batch.mask.shape[-1]  # a tensor size, not a Python int: one compiled block serves every length
            keys, values = cache.read(batch.slots, kv_len, q.dtype)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=batch.mask, enable_gqa=True)
            out = out.transpose(1, 2).reshape(bsz, seqlen, q_size)
        projected = self.wo(out)
        if self.lora is not None and batch.adapters is not None:
            projected = projected + self.lora.delta(self.lora_weights["wo"], out, batch.adapters).to(projected.dtype)
        return projected


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        self.layer_id = layer_id
        self.lora: "LoraPool | None" = None  # set by `Transformer.attach_lora`, as in Attention
        self.lora_weights: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = {}
        self.w13 = nn.Linear(args.dim, 2 * args.intermediate_size, bias=False)
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x: Tensor, adapters: Tensor | None = None) -> Tensor:
        lora = self.lora if adapters is not None else None
        gate_up = self.w13(x)
        if lora is not None:
            gate_up = gate_up + lora.delta(self.lora_weights["w13"], x, adapters).to(gate_up.dtype)
        gate, up = gate_up.chunk(2, dim=-1)
        hidden = F.silu(gate) * up
        out = self.w2(hidden)
        if lora is not None:
            out = out + lora.delta(self.lora_weights["w2"], hidden, adapters).to(out.dtype)
        return out


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args, layer_id)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, batch: "AttentionBatch", cache: "LayerKV") -> Tensor:
        h = x + self.attention(self.attention_norm(x), batch, cache)
        return h + self.feed_forward(self.ffn_norm(h), batch.adapters)


@dataclass
class AttentionBatch:
    """Where each row of a batch lives in the KV cache, built once per step by the runner.

    Row b holds `lengths[b]` real tokens (right-padded to L) at positions `starts[b] + i`.
    A decode batch (L = 1) carries `decode_lengths` instead of a mask: attention then reads
    exactly each row's length, with no host synchronisation (so it can be a CUDA graph).
    """

    slots: Tensor  # [B] KV slot of each row
    cos: Tensor  # [B, 1, L, D/2]
    sin: Tensor
    write_slots: Tensor  # [B * L] slot of every token position
    write_positions: Tensor  # [B * L] cache position of every token
    mask: Tensor | None = None  # [B, 1, L, kv_len] True where a query may attend; kv_len = keys read per row
    decode_lengths: Tensor | None = None  # [B] keys per row, the new one included (decode only)
    adapters: Tensor | None = None  # [B, L, P] each token's LoRA adapter, one-hot over the pool (model/lora.py)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, max_positions: int = 8192):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope", rope_table(args, max_positions), persistent=False)
        self.lora: "LoraPool | None" = None  # resident LoRA adapters, if any (`attach_lora`)

    def make_batch(self, slots: Tensor, starts: Tensor, lengths: Tensor, seqlen: int,
                   kv_len: int | None = None) -> AttentionBatch:
        """Describe a batch of rows (see AttentionBatch); positions past a row's length are padding.

        `kv_len` (keys read per row) defaults to the longest real length, which costs a host
        sync; a CUDA graph passes a static bound instead (the mask hides the keys past a length).
        """
        device = slots.device
        offsets = torch.arange(seqlen, device=device)
        positions = starts[:, None] + offsets[None, :]  # [B, L]
        # Padding tokens are written just past the real ones and overwritten later; clamp keeps
        # them inside the slot.
        positions = positions.clamp(max=self.rope.shape[0] - 1)
        if kv_len is None:
            kv_len = int((starts + lengths).max())
        keys = torch.arange(kv_len, device=device)
        real_end = (starts + lengths)[:, None, None]
        mask = (keys[None, None, :] <= positions[:, :, None]) & (keys[None, None, :] < real_end)
        cos_sin = self.rope[positions]  # [B, L, D/2, 2]
        return AttentionBatch(
            slots=slots,
            cos=cos_sin[..., 0].unsqueeze(1),
            sin=cos_sin[..., 1].unsqueeze(1),
            write_slots=slots.repeat_interleave(seqlen),
            write_positions=positions.reshape(-1),
            mask=mask.unsqueeze(1),
        )

    def make_decode_batch(self, slots: Tensor, positions: Tensor) -> AttentionBatch:
        """One new token per row at `positions` (the row's length so far); no host sync."""
        cos_sin = self.rope[positions]  # [B, D/2, 2]
        return AttentionBatch(
            slots=slots,
            cos=cos_sin[:, None, None, :, 0],
            sin=cos_sin[:, None, None, :, 1],
            write_slots=slots,
            write_positions=positions,
            decode_lengths=positions + 1,
        )

    def attach_lora(self, pool: "LoraPool | None") -> None:
        """Add each row's adapter update (`AttentionBatch.adapters`) to every projection (None: no more).

        Each layer holds its own part of the pool as tensors: the blocks share one compiled code
        object, and code that looked its part up by the layer's index would be compiled once per
        layer (Dynamo guards on the integer), past the recompile limit, and then run uncompiled."""
        self.lora = pool
        for layer, block in enumerate(self.layers):
            block.attention.lora = block.feed_forward.lora = pool
            for module, names in ((block.attention, ("wqkv", "wo")), (block.feed_forward, ("w13", "w2"))):
                module.lora_weights = {} if pool is None else {n: pool.weights(layer, n) for n in names}

    def with_adapters(self, batch: AttentionBatch, indices: Tensor, seqlen: int) -> AttentionBatch:
        """`batch` with each row's pool place (-1: none) as the one-hot `adapters` the layers read
        (after `attach_lora`)."""
        from orpheus_tts.model.lora import adapter_onehot

        return dataclasses.replace(batch, adapters=adapter_onehot(indices, self.lora.capacity, seqlen,
                                                                  self.lora.dtype))

    def forward(self, tokens: Tensor, batch: AttentionBatch, kv_cache) -> Tensor:
        """Final-normed hidden states [B, L, dim]; the caller picks rows and applies a head."""
        x = self.tok_embeddings(tokens)
        for layer, cache in zip(self.layers, kv_cache.layers):
            x = layer(x, batch, cache)
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """Full-vocabulary logits, fp32."""
        return self.output(hidden).float()

    def logits_for_rows(self, hidden: Tensor, rows: slice) -> Tensor:
        """Logits of a contiguous id range only (the audio ids of one frame position), fp32."""
        return F.linear(hidden, self.output.weight[rows]).float()
