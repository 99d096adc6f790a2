"""LoRA adapters in PEFT's format, many resident at once, each row of a batch with its own.

A fine-tuned voice is a low-rank update of some projections: W' = W + (alpha / r) B A. The base
weights stay as they are (FP8 or bf16) and the update is added to each projection's output. A
`LoraPool` keeps up to `capacity` adapters on the device in fixed tensors, per layer and fused
projection: A [S, P, R, K] (the S sub-projections of a fused one, `wqkv` = q, k, v and `w13` =
gate, up; P places; R the largest rank, smaller ones zero-padded) and, per sub-projection,
B_s [N_s, P, R] with the scale folded in. For the tokens of a batch,

    h = x @ A_all^T              one GEMM over every resident adapter  [T, S * P * R]
    h *= onehot(row's adapter)   the other adapters' parts zeroed (no adapter: all of them)
    y_s = h_s @ B_s^T            per sub-projection                     [T, N_s]

Both layouts are the ones these products read, so a step reads the weights where they lie (a
place-major B had to be copied into this order at every step, for every layer).
Rows with different adapters, and rows with none, share one step, the shapes never change
(CUDA graphs capture it once), and each step reads every resident adapter once whatever the mix.
That read is the cost: about (sum of K + N over the targets) x R x 2 bytes x layers per adapter,
which is why the pool is bounded. Loading an adapter copies it into a free place of the pool.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from orpheus_tts.model.llama import ModelArgs

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT's module names (Hugging Face Llama) -> (our fused projection, its sub-projection index).
TARGETS = {"q_proj": ("wqkv", 0), "k_proj": ("wqkv", 1), "v_proj": ("wqkv", 2), "o_proj": ("wo", 0),
           "gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", 0)}
FUSED = ("wqkv", "wo", "w13", "w2")
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter this server cannot serve: the message names the file and the field."""


def sub_shapes(args: ModelArgs) -> dict[str, tuple[int, list[int]]]:
    """Per fused projection: its input size K and its sub-projections' output sizes."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    return {"wqkv": (args.dim, [q, kv, kv]), "wo": (q, [args.dim]),
            "w13": (args.dim, [args.intermediate_size] * 2), "w2": (args.intermediate_size, [args.dim])}


def _module_shape(args: ModelArgs, module: str) -> tuple[int, int]:
    fused, sub = TARGETS[module]
    k, outs = sub_shapes(args)[fused]
    return k, outs[sub]


@dataclass
class LoraAdapter:
    """One adapter read from disk: per (layer, PEFT module), A [r, K] and B [N, r] with the scale
    folded into B."""

    name: str
    rank: int
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def load_adapter(path: str | Path, name: str, args: ModelArgs, max_rank: int) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter directory against the model it will run on."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"adapter {name!r}: {config_path.name} is missing (a PEFT adapter directory has "
                           f"{CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {name!r}: {config_path.name} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {name!r}: {config_path.name} must hold a JSON object")
    _check_config(name, config, max_rank)
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is missing") from None
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is not a readable safetensors file: {exc}") from None
    halves: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if not match or match[3] not in TARGETS:
            raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} holds {key!r}; only LoRA A/B weights of the "
                               f"attention and MLP projections ({', '.join(TARGETS)}) can be served")
        layer = int(match[1])
        if layer >= args.n_layers:
            raise AdapterError(f"adapter {name!r}: {key!r} is for layer {layer}; the model has {args.n_layers}")
        halves.setdefault((layer, match[3]), {})[match[4]] = tensor
    if not halves:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} holds no LoRA weights")
    weights = {}
    for (layer, module), pair in sorted(halves.items()):
        where = f"layers.{layer}.{module}"
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"adapter {name!r}: {where} has lora_{''.join(pair)} without its other half")
        a, b = pair["A"], pair["B"]
        k, n = _module_shape(args, module)
        if a.shape != (rank, k) or b.shape != (n, rank):
            raise AdapterError(f"adapter {name!r}: {where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                               f"not fit this model (rank {rank}: expected ({rank}, {k}) and ({n}, {rank}))")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"adapter {name!r}: {where} holds NaN or infinite weights")
        weights[(layer, module)] = (a.float(), b.float() * scale)
    return LoraAdapter(name, rank, weights)


def _check_config(name: str, config: dict, max_rank: int) -> None:
    def refuse(field: str, why: str) -> AdapterError:
        return AdapterError(f"adapter {name!r}: {CONFIG_FILE}: {field}: {why}")

    if config.get("peft_type") != "LORA":
        raise refuse("peft_type", f"must be LORA, got {config.get('peft_type')!r}")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise refuse("r", f"must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise refuse("r", f"{rank} is over this server's adapters.max_rank ({max_rank})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise refuse("lora_alpha", f"must be a number, got {alpha!r}")
    unsupported = {"use_dora": "DoRA", "lora_bias": "LoRA biases", "fan_in_fan_out": "fan-in-fan-out weights"}
    for field, what in unsupported.items():
        if config.get(field):
            raise refuse(field, f"{what} cannot be served")
    if config.get("bias", "none") != "none":
        raise refuse("bias", f"must be none, got {config['bias']!r}")
    for field in ("modules_to_save", "rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise refuse(field, "must be empty: only one rank and scale per adapter, and no whole modules replaced")


class LoraPool:
    """Up to `capacity` adapters resident on the device, in fixed tensors (see the module's doc)."""

    def __init__(self, args: ModelArgs, capacity: int, max_rank: int, device: torch.device, dtype: torch.dtype):
        self.args, self.capacity, self.max_rank, self.dtype = args, capacity, max_rank, dtype
        self.a: dict[tuple[int, str], Tensor] = {}  # [S, P, R, K]
        self.b: dict[tuple[int, str], tuple[Tensor, ...]] = {}  # per sub-projection, [N_s, P, R]
        for layer in range(args.n_layers):
            for fused, (k, outs) in sub_shapes(args).items():
                self.a[(layer, fused)] = torch.zeros(len(outs), capacity, max_rank, k, device=device, dtype=dtype)
                self.b[(layer, fused)] = tuple(torch.zeros(n, capacity, max_rank, device=device, dtype=dtype)
                                               for n in outs)

    def tensors(self) -> list[Tensor]:
        return [*self.a.values(), *(b for bs in self.b.values() for b in bs)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors())

    def put(self, index: int, adapter: LoraAdapter) -> None:
        """Copy `adapter` into place `index` (what was there is overwritten; its unused parts zeroed)."""
        for layer in range(self.args.n_layers):
            for fused in FUSED:
                self.a[(layer, fused)][:, index].zero_()
                for b in self.b[(layer, fused)]:
                    b[:, index].zero_()
        r = adapter.rank
        for (layer, module), (a, b) in adapter.weights.items():
            fused, sub = TARGETS[module]
            self.a[(layer, fused)][sub, index, :r].copy_(a)
            self.b[(layer, fused)][sub][:, index, :r].copy_(b)

    def weights(self, layer: int, fused: str) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Projection `fused` of `layer`: its A [S, P, R, K] and each sub-projection's B [N_s, P, R]."""
        return self.a[(layer, fused)], self.b[(layer, fused)]

    @staticmethod
    def delta(weights: tuple[Tensor, tuple[Tensor, ...]], x: Tensor, onehot: Tensor) -> Tensor:
        """The update of one projection (its `weights` in one layer, `weights(layer, fused)`) for
        tokens x [..., K]; `onehot` [..., P] says each token's adapter (a row of zeros: none)."""
        a, bs = weights
        subs, p, r, k = a.shape
        h = F.linear(x.to(a.dtype), a.view(subs * p * r, k)).unflatten(-1, (subs, p, r))  # [..., S, P, R]
        h = h * onehot[..., None, :, None].to(h.dtype)
        parts = [F.linear(h[..., s, :, :].flatten(-2), b.view(b.shape[0], p * r)) for s, b in enumerate(bs)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def adapter_onehot(indices: Tensor, capacity: int, seqlen: int, dtype: torch.dtype) -> Tensor:
    """[B] pool places (-1: no adapter) -> [B, seqlen, P] one-hot rows, for `LoraPool.delta`."""
    onehot = F.one_hot(indices.clamp(min=0), capacity).to(dtype) * (indices >= 0)[:, None].to(dtype)
    return onehot[:, None, :].expand(-1, seqlen, -1)
