"""Serving weights: the model as the server runs it, saved once by the engine builder.

`serving.safetensors` holds the fused projections (`wqkv`, `w13`) under the model's own names;
for FP8 each block projection is `<name>.weight_fp8` (float8_e4m3fn) with `<name>.weight_scale`
(float32), exactly the buffers of `Fp8Linear`, so a server loads them as they are and quantises
nothing at start-up. `serving.json` holds the shape (`ModelArgs`), the precision and the FP8
scaling. A tied output head is stored once (as the embedding).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from orpheus_tts.model.fp8 import Fp8Linear, fp8_layers, is_fp8
from orpheus_tts.model.llama import ModelArgs, Transformer
from orpheus_tts.model.loader import CheckpointError, finish_model

SERVING_WEIGHTS = "serving.safetensors"
SERVING_CONFIG = "serving.json"


def has_serving_weights(path: str) -> bool:
    return (Path(path) / SERVING_WEIGHTS).is_file()


def serving_precision(model: Transformer) -> str:
    return "fp8" if is_fp8(model) else "bf16"


def fp8_scaling(model: Transformer) -> str | None:
    layers = [getattr(parent, name) for parent, name in fp8_layers(model)]
    if not isinstance(layers[0], Fp8Linear):
        return None
    return "rowwise" if layers[0].rowwise else "tensorwise"


def save_serving_weights(model: Transformer, directory: Path) -> dict:
    """Write serving.safetensors + serving.json into `directory`; returns serving.json's content."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    if model.args.tie_word_embeddings:
        state.pop("output.weight", None)  # the same tensor as the embedding
    info = {"args": dataclasses.asdict(model.args), "precision": serving_precision(model),
            "fp8Scaling": fp8_scaling(model), "dtype": str(model.output.weight.dtype).removeprefix("torch.")}
    save_file(state, str(directory / SERVING_WEIGHTS), metadata={"precision": info["precision"]})
    (directory / SERVING_CONFIG).write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_serving_config(directory: Path) -> dict:
    try:
        return json.loads((directory / SERVING_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / SERVING_CONFIG}: unreadable ({exc})") from exc


def load_serving_weights(path: str, device: torch.device, dtype: torch.dtype, max_positions: int) -> Transformer:
    """The model from serving weights, on `device`: 16-bit tensors in `dtype`, FP8 ones as saved."""
    directory = Path(path)
    info = read_serving_config(directory)
    args = ModelArgs(**info["args"])
    try:
        state = load_file(str(directory / SERVING_WEIGHTS), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{directory / SERVING_WEIGHTS}: unreadable ({exc})") from exc
    with torch.device("meta"):
        model = Transformer(args, max_positions)
    if info["precision"] == "fp8":
        names = {id(module): name for name, module in model.named_modules()}
        for parent, attr in fp8_layers(model):
            prefix = f"{names[id(parent)]}.{attr}."
            try:
                weight, scale = state.pop(prefix + "weight_fp8"), state.pop(prefix + "weight_scale")
            except KeyError:
                raise CheckpointError(f"{directory / SERVING_WEIGHTS}: no FP8 tensors for {prefix[:-1]}") from None
            setattr(parent, attr, Fp8Linear(weight, scale, triton_rows=False))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return finish_model(model, device, max_positions)
