"""The `load` section: the in-engine load as configured, then an A/B of each `--variant`.

A variant of settings the engine reads at every step (`orpheus_tts.config.LIVE_KEYS`, the
config's own list) runs on the same warm engine, level by level right after the configured
one, so the A/B shares one start-up and the GPU's state; any other variant gets an engine of
its own. Changing a live setting is a `setattr` on the running engine's `engine.config`;
`engine.make_request(text, seed=, ignore_end_of_speech=)` and `engine.synthesize(request)`
give the same-seed streams.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
from pathlib import Path

import numpy as np
import torch

from orpheus_bench.engine_load import bench_config, measure_level, start_engine
from orpheus_bench.lora_adapters import write_adapters
from orpheus_bench.targets import EngineTarget
from orpheus_bench.workload import DEFAULT_TEXT
from orpheus_bench.results import log
from orpheus_bench.server_parts import AudioChunk
from orpheus_tts.config import LIVE_KEYS, load_config
from orpheus_tts.model.llama import ModelArgs


def _setting(config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _typed_values(overrides: dict) -> dict:
    """Config overrides given as text, with the types the config gives them."""
    typed = load_config(environ={}, overrides=overrides)
    return {key: _setting(typed, key) for key in overrides}


def _apply_live(config, values: dict) -> None:
    for key, value in values.items():
        if key not in LIVE_KEYS:
            raise ValueError(f"{key} is read at start-up only: it cannot change on a running engine")
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)


async def engine_load(levels, max_batch, quantization, requests, overrides, live_variants=(), adapters=0) -> dict:
    """The load benchmark's standard workload (`orpheus-tts bench --in-process`), plus where the
    engine thread's time went at each level and the GPU memory in use. Each live variant runs
    every level right after the configured engine on the same engine, so the A/B shares one
    start-up and the GPU's state. With `adapters` N, N random rank-64 LoRA adapters are resident
    and the streams spread over them by seed."""
    if adapters:
        folder = Path(tempfile.mkdtemp()) / "adapters"
        write_adapters(folder, ModelArgs.from_name("orpheus-3b"), adapters, rank=64)
        overrides = {**overrides, "adapters.dir": str(folder), "adapters.max_resident": str(adapters)}
    config = bench_config(levels, max_batch, quantization, overrides)
    run = dict(load_config_overrides=overrides, adapters=adapters)
    settings = [{}] + [_typed_values(variant) for variant in live_variants]
    base_values = {key: _setting(config, key)
                   for key in {"scheduler.adaptive_chunks", *(k for variant in settings for k in variant)}}
    engine, observer, run["engine_start_s"] = await start_engine(config)
    target = EngineTarget(config, adapters=adapters)
    target.engine = engine
    if len(settings) > 1:
        run["same_seed_stream_vs_configured"] = await _same_seed_streams(engine, settings, base_values, DEFAULT_TEXT)
    rows: list[list[dict]] = [[] for _ in settings]
    for n in levels:
        for index, variant in enumerate(settings):
            _apply_live(engine.config, {**base_values, **variant})
            label = "".join(f" {key}={value}" for key, value in {**overrides, **variant}.items())
            rows[index].append(await measure_level(engine, target, observer, n, requests, label, DEFAULT_TEXT))
    _apply_live(engine.config, base_values)
    run.update(engine_load=rows[0], gpu_memory_allocated_gb=torch.cuda.memory_allocated() / 1e9,
               gpu_memory_reserved_gb=torch.cuda.memory_reserved() / 1e9)
    run["live_variants"] = [dict(load_config_overrides={k: str(v) for k, v in variant.items()},
                                 same_engine=True, engine_load=variant_rows)
                            for variant, variant_rows in zip(settings[1:], rows[1:])]
    engine.stop()
    return run


async def _same_seed_streams(engine, settings, base_values, text) -> list[dict]:
    """One stream with a fixed seed under each setting (chunk joins fixed, so only the setting
    differs): whether its audio equals the configured engine's, sample for sample."""
    audio = []
    for variant in settings:
        _apply_live(engine.config, {**base_values, "scheduler.adaptive_chunks": False, **variant})
        request = engine.make_request(text, seed=7, ignore_end_of_speech=True)
        audio.append(np.concatenate([e.samples async for e in engine.synthesize(request) if isinstance(e, AudioChunk)]))
    _apply_live(engine.config, base_values)
    rows = []
    for variant, samples in zip(settings[1:], audio[1:]):
        same_length = samples.shape == audio[0].shape
        rows.append(dict(load_config_overrides={k: str(v) for k, v in variant.items()}, samples=int(samples.size),
                         identical=bool(same_length and np.array_equal(samples, audio[0])),
                         max_abs_difference=float(np.abs(samples - audio[0]).max()) if same_length else None))
        log(f"same seed, one stream, {rows[-1]['load_config_overrides']}: identical audio {rows[-1]['identical']}")
    return rows


def load_runs(results, levels, max_batch, quantization, requests, variant_flags, overrides, adapters=0):
    """The load section: the engine as configured, then per `--variant` (an A/B in one call, on
    the same GPU): live settings on the same engine, level by level; others on a new engine."""
    variants = [dict([variant.split("=", 1)]) for variant in variant_flags]
    live = [v for v in variants if set(v) <= set(LIVE_KEYS)]
    run = lambda extra, live_variants=(): asyncio.run(engine_load(  # noqa: E731
        levels, max_batch, quantization, requests, {**overrides, **extra}, live_variants, adapters))
    results.update(run({}, live))
    results["engine_load_variants"] = results.pop("live_variants")
    for variant in variants:
        if variant in live:
            continue
        gc.collect()
        torch.cuda.empty_cache()
        results["engine_load_variants"].append(run(variant))
