"""The engine's parts from the configuration: which device and dtype, FP8 or not, compiled or not.

Every placement and precision policy lives here, so the engine itself receives ready parts
(a model, its tokenizer, a codec) and tests can hand it parts built any other way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.config import ServerConfig
from orpheus_tts.model.fp8 import FP8_MIN_COMPUTE_CAPABILITY, fp8_supported, quantize_to_fp8
from orpheus_tts.model.llama import Transformer
from orpheus_tts.model.loader import compile_model, load_model
from orpheus_tts.model.tokenizer import load_tokenizer

log = logging.getLogger("orpheus_tts.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


def kv_cache_dtype(config: ServerConfig, model: Transformer) -> torch.dtype:
    """`auto` keeps the cache in the model's activation dtype."""
    weight = model.output.weight
    if config.model.kv_cache_dtype == "auto":
        return weight.dtype
    return resolve_dtype(config.model.kv_cache_dtype, weight.device)


@dataclass
class EngineParts:
    model: Transformer
    tokenizer: Tokenizer
    codec: SnacCodec


def load_parts(config: ServerConfig) -> EngineParts:
    """Load the model (FP8 and compiled where the configuration and the GPU allow), its
    tokenizer and the codec."""
    device = resolve_device(config.model.device)
    model = load_model(config.model.path, device, resolve_dtype(config.model.dtype, device),
                       config.scheduler.max_context_tokens, config.model.seed)
    quantization = config.model.quantization
    if quantization == "fp8" and not fp8_supported(device):
        arch = "sm_{}{}".format(*FP8_MIN_COMPUTE_CAPABILITY)
        raise ValueError(f"model.quantization=fp8 needs a GPU with FP8 ({arch} or newer); {device} has none")
    if quantization == "fp8" or (quantization == "auto" and fp8_supported(device)):
        log.info("FP8 weights (%s)", quantize_to_fp8(model))
    if config.model.compile and device.type == "cuda":
        compile_model(model)
    return EngineParts(model, load_tokenizer(config.model.path), load_codec(config))


def load_codec(config: ServerConfig) -> SnacCodec:
    """SNAC in float16 on a GPU and float32 on the CPU unless the configuration names a dtype."""
    device = resolve_device(config.codec.device)
    name = config.codec.dtype
    if name == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = resolve_dtype(name, device)
    return SnacCodec.load(config.codec.path, device, noise=config.codec.noise, seed=config.codec.seed, dtype=dtype)
