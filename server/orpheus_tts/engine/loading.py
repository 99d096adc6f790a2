"""The engine's parts from the configuration: which device and dtype, FP8 or not, compiled or not.

Every placement and precision policy lives here, so the engine itself receives ready parts
(a model, its tokenizer, a codec) and tests can hand it parts built any other way.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.config import ServerConfig
from orpheus_tts.engine.compile_settings import apply_compile_settings
from orpheus_tts.engine.engine_dir import EngineDir, EngineError
from orpheus_tts.engine.startup import StartupPhases
from orpheus_tts.model.fp8 import FP8, FP8_MIN_COMPUTE_CAPABILITY, fp8_supported, is_fp8, prepare_fp8, quantize_to_fp8
from orpheus_tts.model.llama import Transformer
from orpheus_tts.model.loader import compile_model, load_model
from orpheus_tts.model.serving_weights import has_serving_weights, load_serving_weights
from orpheus_tts.model.tokenizer import load_tokenizer
from orpheus_tts.voices import Voice, checkpoint_voices, parse_setting, voice_table

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
    """`auto` keeps the cache in the model's activation dtype; `fp8` is float8_e4m3fn with
    per-vector scales (`engine/kv_cache.py`)."""
    weight = model.output.weight
    if config.model.kv_cache_dtype == "auto":
        return weight.dtype
    if config.model.kv_cache_dtype == "fp8":
        if weight.device.type == "cuda" and not fp8_supported(weight.device):
            raise ValueError("model.kv_cache_dtype=fp8 needs a GPU with FP8 (sm_{}{} or newer); this one is "
                             "sm_{}{}".format(*FP8_MIN_COMPUTE_CAPABILITY, *torch.cuda.get_device_capability(weight.device)))
        return FP8
    try:
        return resolve_dtype(config.model.kv_cache_dtype, weight.device)
    except ValueError:
        raise ValueError(f"model.kv_cache_dtype must be auto, fp8, float16, bfloat16 or float32, got "
                         f"{config.model.kv_cache_dtype!r}") from None


@dataclass
class EngineParts:
    model: Transformer
    tokenizer: Tokenizer
    codec: SnacCodec


def open_engine(config: ServerConfig, observer=None) -> tuple[ServerConfig, EngineDir | None]:
    """With `engine.path`: check the manifest, point the model and codec at the engine's, and
    report what does not match (refused unless `engine.on_mismatch=compile`)."""
    if not config.engine.path:
        return config, None
    engine = EngineDir(config.engine.path)
    engine.check_precision(config.model.quantization)
    device = resolve_device(config.model.device)
    mismatches = engine.mismatches(config, device)
    if mismatches and config.engine.on_mismatch != "compile":
        raise EngineError(f"engine {engine.path} does not match this server: " + "; ".join(map(str, mismatches))
                          + ". Build it for these settings, or set engine.on_mismatch=compile to compile at start")
    if mismatches:
        log.warning("engine %s does not match (%s): compiling at start-up", engine.path, "; ".join(map(str, mismatches)))
        if observer is not None:
            observer.on_engine_mismatch([m.field for m in mismatches])
    paths = dataclasses.replace(config, model=dataclasses.replace(config.model, path=engine.model_path),
                                codec=dataclasses.replace(config.codec, path=engine.snac_path))
    return paths, engine


def model_voices(config: ServerConfig) -> tuple[Voice, ...]:
    """The base model's voices: `model.voices`, else what the engine build recorded, else the
    checkpoint's `voices.json`, else the English eight. A manifest or a small file is read,
    never the weights, so the API knows them while the model loads."""
    if config.model.voices:
        return parse_setting(config.model.voices)
    if config.engine.path:
        return EngineDir(config.engine.path).voices
    return checkpoint_voices(config.model.path)


def server_voices(config: ServerConfig) -> dict[str, Voice]:
    """Every voice a request may name, by name, with its language and adapter (the model's, then
    `adapters.voices`): the one list the engine validates against and ListVoices and
    /v1/audio/voices show."""
    return voice_table(model_voices(config), config.adapters.voice_map(), config.default_voice)


def load_parts(config: ServerConfig, phases: StartupPhases | None = None, observer=None) -> EngineParts:
    """Load the model (FP8 and compiled where the configuration and the GPU allow), its
    tokenizer and the codec; from a built engine's serving weights and compiled artifacts when
    `engine.path` names one."""
    phases = phases or StartupPhases()
    config, engine = open_engine(config, observer)
    device = resolve_device(config.model.device)
    quantization = config.model.quantization
    if quantization == "fp8" and not fp8_supported(device):
        arch = "sm_{}{}".format(*FP8_MIN_COMPUTE_CAPABILITY)
        raise ValueError(f"model.quantization=fp8 needs a GPU with FP8 ({arch} or newer); {device} has none")
    if device.type == "cuda" and (config.model.compile or config.codec.compile):
        apply_compile_settings()
    # The compiled artifacts are copied into place while the weights load (both mostly wait on
    # the disk); nothing may compile before they are in place, the FP8 kernel check included.
    copier = ThreadPoolExecutor(1, thread_name_prefix="compile-cache") \
        if engine is not None and device.type == "cuda" else None
    cache_copy = copier.submit(engine.load_compile_cache) if copier is not None else None
    with phases.phase("weights"):
        dtype = resolve_dtype(config.model.dtype, device)
        if has_serving_weights(config.model.path):
            model = load_serving_weights(config.model.path, device, dtype, config.scheduler.max_context_tokens)
        else:
            model = load_model(config.model.path, device, dtype, config.scheduler.max_context_tokens, config.model.seed)
    if cache_copy is not None:
        with phases.phase("compile_cache"):  # what the copy took beyond the weights
            log.info("compiled artifacts loaded: %s", cache_copy.result())
        copier.shutdown()
    with phases.phase("weights"):
        if is_fp8(model):
            if not fp8_supported(device):
                raise EngineError(f"precision: {config.model.path} holds FP8 weights, and {device} has no FP8")
            log.info("FP8 weights as built (%s)", prepare_fp8(model))
        elif quantization == "fp8" or (quantization == "auto" and fp8_supported(device) and engine is None):
            log.info("FP8 weights (%s)", quantize_to_fp8(model))
        tokenizer, codec = load_tokenizer(config.model.path), load_codec(config)
        if engine is not None:
            codec.aot_dir = engine.snac_aot_path
    if config.model.compile and device.type == "cuda":
        compile_model(model)
    return EngineParts(model, tokenizer, codec)


def load_codec(config: ServerConfig) -> SnacCodec:
    """SNAC in float16 on a GPU and float32 on the CPU unless the configuration names a dtype."""
    device = resolve_device(config.codec.device)
    name = config.codec.dtype
    if name == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = resolve_dtype(name, device)
    return SnacCodec.load(config.codec.path, device, noise=config.codec.noise, seed=config.codec.seed, dtype=dtype)
