"""The load benchmark's standard workload on the engine in this process, and where the engine
thread's time went at each level: prefill, decode, SNAC launch and wait, host work, Python
garbage collections, step sizes and the step-cost line the admission uses.

Reaches into `Engine.from_config(config, observer=)`, `.start()`, `.warm_up()`, `.stop()`,
`engine.timings` (a dataclass of running totals: `steps`, `step_s`, `prefill_s`, `decode_s`,
`snac_launch_s`, `snac_wait_s` and the property `host_s`), `engine.step_cost.predict(rows)`
and `EngineObserver.on_step(seconds, decode_batch, prefill_batch, stats)`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import time

import numpy as np
import torch

from orpheus_bench.load import Progress, run_level
from orpheus_bench.workload import Workload
from orpheus_bench.results import log
from orpheus_bench.server_parts import Engine, EngineObserver
from orpheus_tts.config import load_config


def bench_config(levels, max_batch, quantization, overrides):
    """The Orpheus-3B shape with random weights, sized for the highest level."""
    max_sessions = max(levels)
    return load_config(environ={}, overrides={
        "model.path": "random:orpheus-3b", "codec.path": "random", "codec.noise": False,
        "scheduler.max_concurrent_sessions": max_sessions, "scheduler.max_batch_size": max_batch,
        "scheduler.max_context_tokens": 1024, "scheduler.max_pending_sessions": 4 * max_sessions,
        "model.quantization": quantization, **overrides,
    })


class StepSizes(EngineObserver):
    """(seconds, decode rows, prefill rows) of every engine step."""

    def __init__(self):
        self.steps = []

    def on_step(self, seconds, decode_batch, prefill_batch, stats):
        self.steps.append((seconds, decode_batch, prefill_batch))


async def start_engine(config) -> tuple:
    """A warm engine with a `StepSizes` observer, and the seconds its start took."""
    observer = StepSizes()
    t = time.time()
    engine = Engine.from_config(config, observer=observer).start()
    await asyncio.to_thread(engine.warm_up)
    return engine, observer, time.time() - t


class GcPauses:
    """Python garbage collections while a level runs: the engine thread stops for each one."""

    def __init__(self):
        self.pauses: list[tuple[int, float, int]] = []  # (generation, seconds, objects freed)
        self._started = None
        gc.callbacks.append(self)

    def __call__(self, phase, info) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses.append((info["generation"], time.perf_counter() - self._started, info["collected"]))
            self._started = None

    def summary(self) -> dict:
        """Pauses, and what lives in the oldest generation (not frozen at start-up): the objects
        a full collection walks."""
        seconds = [s for _, s, _ in self.pauses]
        oldest = collections.Counter(type(o).__name__ for o in gc.get_objects(generation=2))
        full = [dict(pause_ms=s * 1e3, objects_freed=n) for g, s, n in self.pauses if g == 2]
        return dict(collections=len(seconds), full_collections=len(full), full=full,
                    pause_max_ms=max(seconds, default=0.0) * 1e3, pause_total_ms=sum(seconds) * 1e3,
                    oldest_generation_objects=sum(oldest.values()), oldest_generation_types=dict(oldest.most_common(12)))


def split_steps(steps: np.ndarray) -> dict:
    """The steps of a level (rows of seconds, decode rows, prefill rows) with a prefill in them
    apart from those without, and a line in the rows fitted to the decode-only ones. A step waits
    for the ids of the one before (`scheduler.overlap_steps`), so a prefill's time shows in its
    own step and the next: both count as prefill steps. Against the engine's own fit (`step_fit`,
    every step), this says how much prefills lift the slope that capacity admission projects."""
    prefill = steps[:, 2] > 0
    prefill = prefill | np.concatenate(([False], prefill[:-1]))
    decode = steps[~prefill & (steps[:, 1] > 0)]
    out = dict(prefill_steps=int(prefill.sum()), decode_only_steps=int(len(decode)),
               prefill_step_ms_mean=float(steps[prefill, 0].mean() * 1e3) if prefill.any() else None,
               decode_step_ms_mean=float(decode[:, 0].mean() * 1e3) if len(decode) else None)
    if len(decode) > 1 and decode[:, 1].std() >= 1.0:
        per_row, fixed = np.polyfit(decode[:, 1], decode[:, 0], 1)
        out.update(decode_only_fixed_ms=float(fixed * 1e3), decode_only_per_row_us=float(per_row * 1e6))
    return out


async def measure_level(engine, target, observer, n, requests, label, text) -> dict:
    """One closed-loop level (`load.run_level`) and the engine's side of it."""
    observer.steps = []
    pauses = GcPauses()
    before = dataclasses.replace(engine.timings)
    torch.cuda.reset_peak_memory_stats()
    row = await run_level(target.stream, n, requests, Workload("standard", text), 1.0, Progress(), f"concurrency {n}")
    after = engine.timings
    spent = {f.name: getattr(after, f.name) - getattr(before, f.name) for f in dataclasses.fields(after)}
    spent["host_s"] = after.host_s - before.host_s
    steps = np.array(observer.steps) if observer.steps else np.zeros((1, 3))
    busy = max(spent["step_s"], 1e-9)
    row.update(
        steps=int(spent["steps"]), step_ms_mean=spent["step_s"] / max(spent["steps"], 1) * 1e3,
        decode_batch_mean=float(steps[:, 1].mean()), engine_busy_share=busy / row["wall_s"],
        prefill_steps=int((steps[:, 2] > 0).sum()),
        time_share=dict(prefill=spent["prefill_s"] / busy, decode=spent["decode_s"] / busy,
                        snac_launch=spent["snac_launch_s"] / busy, snac_wait=spent["snac_wait_s"] / busy,
                        host_other=spent["host_s"] / busy),
        gpu_memory_peak_gb=torch.cuda.max_memory_allocated() / 1e9,
        step_ms_percentiles={q: float(np.percentile(steps[:, 0], q)) * 1e3 for q in (50, 99, 100)},
        python_gc=pauses.summary(),
        step_fit=dict(zip(("fixed_ms", "per_row_us", "per_context_token_ns"),  # the engine's step-time plane now
                          (np.array(engine.step_cost.coefficients()) * (1e3, 1e6, 1e9)).tolist())),
        step_split=split_steps(steps),
    )
    gc.callbacks.remove(pauses)
    share = row["time_share"]
    log(f"engine{label} concurrency {n}: TTFB p50 {row['ttfb_p50_ms']:.0f} p95 {row['ttfb_p95_ms']:.0f} "
        f"p99 {row['ttfb_p99_ms']:.0f} ms, real-time {row['realtime_share']:.2f} (stall p50 {row['stall_p50_ms'] or 0:.0f} "
        f"max {row['stall_max_ms'] or 0:.0f} ms), {row['tokens_per_s']:.0f} tok/s, "
        f"success {row['success_rate']:.2f}, audio {row['mean_audio_s']:.2f} s, step {row['step_ms_mean']:.1f} ms "
        f"(batch {row['decode_batch_mean']:.0f}; decode {share['decode']:.0%}, prefill {share['prefill']:.0%}, "
        f"SNAC launch {share['snac_launch']:.0%} wait {share['snac_wait']:.0%}, host {share['host_other']:.0%}); "
        f"step p99 {row['step_ms_percentiles'][99]:.1f} max {row['step_ms_percentiles'][100]:.1f} ms, "
        f"stalls at {row['stall_at_s_p50'] or 0:.2f} s of audio (p50), Python GC: "
        f"{row['python_gc']['full_collections']} full, longest pause {row['python_gc']['pause_max_ms']:.0f} ms, "
        f"{row['python_gc']['oldest_generation_objects']} objects in the oldest generation; step fit "
        f"{row['step_fit']['fixed_ms']:.2f} ms + {row['step_fit']['per_row_us']:.1f} us a row, {row['prefill_steps']} prefills")
    return row
