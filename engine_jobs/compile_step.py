"""The compile step: build the engine from the staged serving weights on the target GPU, warm
it up, and keep what compiling produced, so a server starting from the engine compiles nothing.

Run in the builder's own process with fresh Inductor and Triton cache directories, so what is
saved is exactly what this engine needs: PyTorch's cache artifacts
(`torch.compiler.save_cache_artifacts`) and the Triton cache (kernels and their compiled
launchers; a server image has no C compiler to build launchers with).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from orpheus_tts.config import ServerConfig
from orpheus_tts.engine.engine_dir import (INDUCTOR_TRITON_DIR, MODEL_DIR, SNAC_AOT_DIR, SNAC_DIR, TORCH_CACHE,
                                           TRITON_DIR)


def use_fresh_caches(work: Path) -> None:
    """Point Inductor and Triton at empty directories; call before anything compiles."""
    for name, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / sub)


def compile_engine(staging: Path, config: ServerConfig, snac_aot: bool = False) -> dict:
    """Compile, capture and warm up from `staging`; write compile/; returns what was verified.

    With `snac_aot` the SNAC decoders are compiled ahead of time first (compile/snac), so the
    engine warmed up here captures them exactly as a server starting from this directory will."""
    import torch

    from orpheus_tts.engine import Engine
    from orpheus_tts.engine.loading import load_parts
    from orpheus_tts.engine.startup import StartupPhases

    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, path=str(staging / MODEL_DIR), device="cuda"),
        codec=dataclasses.replace(config.codec, path=str(staging / SNAC_DIR), device="cuda"))
    started = time.monotonic()
    snac_aot = build_snac_decoders(staging / SNAC_AOT_DIR, config) if snac_aot else {"error": "not requested"}
    phases = StartupPhases()
    parts = load_parts(config, phases)
    if "error" not in snac_aot:
        parts.codec.aot_dir = staging / SNAC_AOT_DIR
    engine = Engine(config, parts.model, parts.tokenizer, parts.codec, phases=phases).start()
    try:
        engine.warm_up()
    finally:
        engine.stop()
    phases = dict(engine.phases.seconds)
    artifacts = torch.compiler.save_cache_artifacts()
    (staging / TORCH_CACHE).parent.mkdir(parents=True, exist_ok=True)
    if artifacts is not None:
        (staging / TORCH_CACHE).write_bytes(artifacts[0])
    shutil.copytree(os.environ["TRITON_CACHE_DIR"], staging / TRITON_DIR)
    inductor_triton = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "triton"
    if inductor_triton.is_dir():
        shutil.copytree(inductor_triton, staging / INDUCTOR_TRITON_DIR)
    verified = ["decode graphs against the eager step", "a warm-up synthesis end to end"]
    if "error" not in snac_aot:
        verified.insert(0, "AOT SNAC decoders against the eager decoder")
    return {"seconds": round(time.monotonic() - started, 1), "phases": {k: round(v, 2) for k, v in phases.items()},
            "torchCacheBytes": len(artifacts[0]) if artifacts else 0, "snacAot": snac_aot, "verified": verified}


def build_snac_decoders(directory: Path, config: ServerConfig) -> dict:
    """AOTInductor-compile the codec's decoders for the engine's window and batch sizes, in a
    child process (on an H200 with torch 2.11 the step died with SIGSEGV in-process). A
    failure is reported, not fatal: servers then compile the decoder at start, as before."""
    if not (config.codec.compile and config.model.cuda_graphs):
        return {"error": "not used: codec.compile or model.cuda_graphs is off"}
    started = time.monotonic()
    # A child that dies (a crash included) fails the future: BrokenProcessPool.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            report = pool.submit(_build_snac_decoders, directory, config).result()
        except Exception as exc:  # noqa: BLE001 (any failure leaves the torch.compile path in place)
            report = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    if "error" in report:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"warning: AOT SNAC decoders not built ({report['error']}); servers compile the decoder at "
              f"start-up instead", file=sys.stderr)
        return report
    return {**report, "seconds": round(time.monotonic() - started, 1)}


def _build_snac_decoders(directory: Path, config: ServerConfig) -> dict:
    from orpheus_tts.codec.snac_aot import build_decoders
    from orpheus_tts.engine.cuda_graphs import codec_batch_buckets
    from orpheus_tts.engine.loading import load_codec

    max_batch = codec_batch_buckets(config.scheduler.max_concurrent_sessions, config.codec.graph_max_batch)[-1]
    return build_decoders(load_codec(config), config.codec.window_frames, max_batch, directory)
