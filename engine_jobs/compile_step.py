"""The compile step: build the engine from the staged serving weights on the target GPU, warm
it up, and keep what compiling produced, so a server starting from the engine compiles nothing.

Run in the builder's own process with fresh Inductor and Triton cache directories, so what is
saved is exactly what this engine needs: PyTorch's cache artifacts
(`torch.compiler.save_cache_artifacts`) and the Triton cache (kernels and their compiled
launchers; a server image has no C compiler to build launchers with).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from orpheus_tts.config import ServerConfig
from orpheus_tts.engine.engine_dir import INDUCTOR_TRITON_DIR, SNAC_DIR, MODEL_DIR, TORCH_CACHE, TRITON_DIR


def use_fresh_caches(work: Path) -> None:
    """Point Inductor and Triton at empty directories; call before anything compiles."""
    for name, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / sub)


def compile_engine(staging: Path, config: ServerConfig) -> dict:
    """Compile, capture and warm up from `staging`; write compile/; returns what was verified."""
    import torch

    from orpheus_tts.engine import Engine

    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, path=str(staging / MODEL_DIR), device="cuda"),
        codec=dataclasses.replace(config.codec, path=str(staging / SNAC_DIR), device="cuda"))
    started = time.monotonic()
    engine = Engine.from_config(config).start()
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
    return {"seconds": round(time.monotonic() - started, 1), "phases": {k: round(v, 2) for k, v in phases.items()},
            "torchCacheBytes": len(artifacts[0]) if artifacts else 0,
            "verified": ["decode graphs against the eager step", "a warm-up synthesis end to end"]}
