"""Every piece of the server's engine, codec and model that the benches use, imported here and
nowhere else in this package.

The benches drive the engine from below its public face (a runner around a synthetic cache,
captured graphs replayed on their own, the codec's eager decode): when those internals move,
this is the one import list to follow. The attributes reached through these objects are
named where they are used.
"""

from __future__ import annotations

from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.engine import AudioChunk, Engine, EngineObserver, Outcome
from orpheus_tts.engine.cuda_graphs import DecodeGraphs, PrefillGraphs, batch_buckets
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.runner import ModelRunner
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.model import attention, fp8_gemm
from orpheus_tts.model.attention import decode_attention, decode_attention_reference
from orpheus_tts.model.kv_layer import LayerKV
from orpheus_tts.model.fp8 import FP8, FP8_MAX, Fp8Linear, fp8_supported, quantize_to_fp8
from orpheus_tts.model.checks import compiled_block_difference, relative_difference
from orpheus_tts.model.loader import compile_model, load_model
from orpheus_tts.model.lora import LoraPool

__all__ = [
    "AudioChunk", "DecodeGraphs", "Engine", "EngineObserver", "FP8", "FP8_MAX", "Fp8Linear", "KVCache", "LayerKV",
    "LoraPool", "ModelRunner", "Outcome", "PrefillGraphs", "Sampler", "SamplingBatch", "SnacCodec", "attention",
    "batch_buckets", "compile_model", "compiled_block_difference", "decode_attention", "decode_attention_reference", "fp8_gemm",
    "fp8_supported", "load_model", "quantize_to_fp8", "relative_difference",
]
