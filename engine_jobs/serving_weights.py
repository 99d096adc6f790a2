"""The build's weight steps: check the checkpoint, write the serving weights and the codec."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from orpheus_tts.config import ServerConfig
from orpheus_tts.engine import engine_dir as layout
from orpheus_tts.model.fp8 import quantize_to_fp8
from orpheus_tts.model.loader import load_model
from orpheus_tts.model.serving_weights import load_serving_weights, save_serving_weights
from orpheus_tts.model.tokenizer import demo_tokenizer
from orpheus_tts.voices import VOICES_FILE

from engine_jobs import checkpoint
from engine_jobs.sources import Source, fetch, model_path, write_snac

# Copied beside the serving weights: what the server reads from a checkpoint besides its tensors.
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", VOICES_FILE)


def _source(described: dict) -> Source:
    return Source(described["kind"], described["location"], described["revision"])


def write_model(manifest: dict, config: ServerConfig, staging: Path, device: torch.device | None,
                rowwise: bool | None) -> dict:
    """Serving weights (+ tokenizer) in staging/model; FP8 quantised on the GPU when there is one
    (`rowwise` None: the scaling that GPU runs; else the builder's choice for the target)."""
    source = _source(manifest["model"])
    local = None
    if source.kind in ("pvc", "hub"):
        local = fetch(source, staging / ".work" / "model-download", "--model-source")
        checkpoint.validate_checkpoint(local)
    where = device or torch.device("cpu")
    model = load_model(model_path(source, local), where, torch.bfloat16 if where.type == "cuda" else torch.float32,
                       config.scheduler.max_context_tokens, config.model.seed)
    if manifest["precision"] == "fp8":
        quantize_to_fp8(model, rowwise=rowwise)
    target = staging / layout.MODEL_DIR
    target.mkdir(parents=True)
    info = save_serving_weights(model, target)
    if local is not None:
        for name in MODEL_FILES:
            if (local / name).exists():
                shutil.copy2(local / name, target / name)
    else:
        demo_tokenizer().save(str(target / "tokenizer.json"))
    _check_reload(model, target, where)
    return {"servingWeights": info, "bytes": sum(p.stat().st_size for p in target.iterdir())}


def _check_reload(model, target: Path, device: torch.device) -> None:
    """The saved file must give back exactly the tensors the server would have quantised."""
    dtype = model.output.weight.dtype
    again = load_serving_weights(str(target), device, dtype, 1).state_dict()
    for name, tensor in model.state_dict().items():
        if not torch.equal(again[name].view(torch.uint8), tensor.view(torch.uint8)):
            raise RuntimeError(f"serving weights: {name} differs after saving and loading")


def write_snac_dir(manifest: dict, config: ServerConfig, staging: Path) -> dict:
    source = _source(manifest["snac"])
    local = None
    if source.kind in ("pvc", "hub"):
        local = fetch(source, staging / ".work" / "snac-download", "--snac-source")
        checkpoint.validate_snac(local)
    write_snac(source, local, staging / layout.SNAC_DIR, config.codec.seed)
    return {"bytes": sum(p.stat().st_size for p in (staging / layout.SNAC_DIR).iterdir())}
