"""Load the Orpheus LM: a Hugging Face checkpoint directory, or the seeded random demo.

A checkpoint directory holds `config.json`, `model.safetensors` (or shards plus
`model.safetensors.index.json`) and `tokenizer.json`. Hugging Face's separate q/k/v and
gate/up tensors are fused here into the model's `wqkv` and `w13`; a checkpoint without
`lm_head.weight` shares the embedding as its output head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from orpheus_tts.model.llama import ModelArgs, Transformer, rope_table

DEMO = "demo"
RANDOM_PREFIX = "random:"  # random:<named config>, e.g. random:orpheus-3b for benchmarks without weights


class CheckpointError(ValueError):
    """The checkpoint directory is missing a file or holds tensors this model cannot use."""


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def read_hf_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def convert_hf_state_dict(hf: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Hugging Face Llama names -> ours, fusing q/k/v and gate/up."""
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        return hf.pop(name)

    out = {"tok_embeddings.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attention.wqkv.weight"] = torch.cat(
            [take(p + "self_attn.q_proj.weight"), take(p + "self_attn.k_proj.weight"), take(p + "self_attn.v_proj.weight")]
        )
        out[f"layers.{i}.attention.wo.weight"] = take(p + "self_attn.o_proj.weight")
        out[f"layers.{i}.feed_forward.w13.weight"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        out[f"layers.{i}.feed_forward.w2.weight"] = take(p + "mlp.down_proj.weight")
        out[f"layers.{i}.attention_norm.weight"] = take(p + "input_layernorm.weight")
        out[f"layers.{i}.ffn_norm.weight"] = take(p + "post_attention_layernorm.weight")
    if "lm_head.weight" in hf:
        out["output.weight"] = hf.pop("lm_head.weight")
    hf.pop("model.rotary_emb.inv_freq", None)
    leftovers = [k for k in hf if not k.endswith("rotary_emb.inv_freq")]
    if leftovers:
        raise CheckpointError(f"checkpoint has tensors this model does not use: {leftovers[:5]}")
    return out


def load_model(path: str, device: torch.device, dtype: torch.dtype, max_positions: int, seed: int = 0) -> Transformer:
    """Build the model on `device` in `dtype`: `demo` or `random:<config>` (random weights from
    `seed`) or a Hugging Face checkpoint directory."""
    if path == DEMO or path.startswith(RANDOM_PREFIX):
        args = ModelArgs.from_name("demo" if path == DEMO else path[len(RANDOM_PREFIX):])
        with torch.device(device):
            model = Transformer(args, max_positions).to(dtype)
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.normal_(0.0, 0.02, generator=generator)
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
        model.register_buffer("rope", rope_table(args, max_positions).to(device), persistent=False)
        return model.eval().requires_grad_(False)

    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
    args = ModelArgs.from_hf_config(json.loads(config_file.read_text()))
    state = convert_hf_state_dict(read_hf_state_dict(directory), args)
    if "output.weight" not in state:
        args.tie_word_embeddings = True
    elif args.tie_word_embeddings:
        # Declared tied but stored separately: trust the tensors.
        args.tie_word_embeddings = False
    with torch.device("meta"):
        model = Transformer(args, max_positions)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return finish_model(model, device, max_positions)


def finish_model(model: Transformer, device: torch.device, max_positions: int) -> Transformer:
    """After tensors were assigned into a model built on `meta`: refuse any still missing and
    compute the RoPE table (never stored; it was built on `meta` too)."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b.is_meta and n != "rope"]
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors for {missing[:5]}")
    model.register_buffer("rope", rope_table(model.args, max_positions).to(device), persistent=False)
    return model.eval().requires_grad_(False)


def compile_model(model: Transformer) -> Transformer:
    """Compile the transformer block once for any batch size and length (`dynamic=True`).

    Each block's norms, RoPE, residual adds and FP8 activation casts fuse into a few kernels.
    All blocks share one compiled code object, so start-up compiles one block, not 28 unrolled
    ones (compiling the whole forward took 209 s of an H100 start-up). Decode and prefill are
    the two variants; the graphs capture both at start-up, so no request compiles anything.
    """
    # Variants: decode and prefill, one row or many, FP8 rows for Triton or cuBLAS (see fp8.py).
    # Past the limit Dynamo would silently run a variant uncompiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for layer in model.layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    return model
