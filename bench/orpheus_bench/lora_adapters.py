"""Random LoRA adapters in PEFT's on-disk format, for benchmarks of custom voices.

    python -m orpheus_bench.lora_adapters --out DIR --count 8 [--rank 64] [--model random:orpheus-3b]

Writes DIR/bench-0 ... DIR/bench-{count-1}, each `adapter_config.json` + `adapter_model.safetensors`
with every attention and MLP projection targeted (PEFT's key names), small random weights: what
`adapters.dir` serves and `orpheus-tts bench --adapters N` names. No PEFT needed (the GPU image
has none); the server's own loader checks them as it checks any adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from orpheus_tts.model.llama import ModelArgs
from orpheus_tts.model.lora import CONFIG_FILE, TARGETS, WEIGHTS_FILE, sub_shapes

NAME = "bench-{}"


def module_shape(args: ModelArgs, module: str) -> tuple[int, int]:
    """(in, out) of a PEFT target module of this model."""
    fused, sub = TARGETS[module]
    k, outs = sub_shapes(args)[fused]
    return k, outs[sub]


def write_adapters(out: Path, args: ModelArgs, count: int, rank: int, seed: int = 0) -> list[str]:
    names = []
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        directory = out / NAME.format(i)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {}
        for layer in range(args.n_layers):
            for module in TARGETS:
                k, n = module_shape(args, module)
                part = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{part}.{module}"
                weights[f"{prefix}.lora_A.weight"] = torch.randn(rank, k, generator=generator).to(torch.bfloat16) * 0.01
                weights[f"{prefix}.lora_B.weight"] = torch.randn(n, rank, generator=generator).to(torch.bfloat16) * 0.01
        save_file(weights, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                         "target_modules": list(TARGETS), "bias": "none"}))
        names.append(directory.name)
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m orpheus_bench.lora_adapters", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--model", default="random:orpheus-3b", help="random:orpheus-3b or random:demo: the shapes")
    args = p.parse_args(argv)
    model_args = ModelArgs.from_name(args.model.removeprefix("random:"))
    print("\n".join(write_adapters(Path(args.out), model_args, args.count, args.rank)))


if __name__ == "__main__":
    main()
