"""The closed-loop load generator behind `orpheus-tts bench`: streams against a gRPC server or
the engine in-process, and what a client sees of each (TTFB, stalls, real-time share).

The standard workload (so runs compare): closed-loop concurrency N. At each level, N streams
start staggered over `stagger_s`; each sends a 57-character sentence (~40 prompt tokens) whose
speech budget is 118 frames (10.07 s of audio), with end-of-speech suppressed so every stream
speaks all of it, and when its stream ends sends the next one, until it has made `requests`.

The mixed workload (`--workload mixed`, the capacity issue's): 70% short sentences, 30% two-sentence
long-form, and 10% of streams cancelled at a random moment (0.2-3 s after they start). Besides the
closed loop there is an open loop (`--arrival-rate`: Poisson arrivals for `--duration-s`), and
`overload` runs the closed loop at 1.5x and 2x a given `--capacity`. A request the server refuses
(RESOURCE_EXHAUSTED) counts as refused, not failed; cancelled streams count for their audio so far.

Per level: TTFB p50/p95/p99 (as the client sees it), the share of streams that stayed real
time after their first chunk (every chunk arrives before the audio already delivered has
finished playing), the worst playback stall of each stream (p50 and max over streams: how late
its latest chunk was; negative is the margin it kept), tokens/s (from each stream's final
metrics, over the level's wall time) and the success rate. `tuning` finds the largest
concurrency whose TTFB p95 meets the target with every stream real time; `all` runs the
scaling ramp and then the tuning search. The doors streams go through are `targets`, the processes
they run in `clients`; writing the results is `load_cli`'s job.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from orpheus_bench.workload import Workload


@dataclass
class StreamResult:
    ok: bool
    ttfb_ms: float | None
    tokens: int
    audio_s: float
    error: str | None = None
    late_ms: float | None = None  # the worst gap in playback (see `lateness_ms`); <= 0 is real time
    late_at_s: float | None = None  # where in the audio that worst moment was
    refused: bool = False  # RESOURCE_EXHAUSTED: the server said no before any audio
    cancelled: bool = False  # the client hung up on purpose (the mixed workload)
    queue_ms: float | None = None  # the server's own account of the wait for admission

    @property
    def realtime(self) -> bool:
        return (self.ok or self.cancelled) and _in_time(self.late_ms)

    @property
    def admitted(self) -> bool:
        """It got audio: the streams admission promised real time to."""
        return self.ttfb_ms is not None


def worst_wait(arrivals: list[float], audio_before: list[float]) -> tuple[float, float] | None:
    """(ms, audio s): how long playback, started at the first chunk, would have stalled at its
    worst waiting for a chunk (negative: the smallest margin any chunk had), and how far into
    the audio that chunk starts."""
    if not arrivals:
        return None
    first = arrivals[0]
    later = [((a - first - before) * 1e3, before) for a, before in zip(arrivals[1:], audio_before[1:])]
    return max(later, default=(0.0, 0.0))


def lateness_ms(arrivals: list[float], audio_before: list[float]) -> float | None:
    """The stall of `worst_wait` alone."""
    worst = worst_wait(arrivals, audio_before)
    return None if worst is None else worst[0]


def is_realtime(arrivals: list[float], audio_before: list[float]) -> bool:
    """Every chunk arrives before the audio already delivered has finished playing."""
    return _in_time(lateness_ms(arrivals, audio_before))


def _in_time(late_ms: float | None) -> bool:
    return late_ms is not None and late_ms <= 1.0


class Timeline:
    """Chunk arrival times and the audio delivered before each, for one stream."""

    def __init__(self):
        self.start = time.monotonic()
        self.arrivals: list[float] = []
        self.audio_before: list[float] = []
        self.audio_s = 0.0

    def chunk(self, seconds: float) -> None:
        self.arrivals.append(time.monotonic() - self.start)
        self.audio_before.append(self.audio_s)
        self.audio_s += seconds

    def result(self, ok: bool, tokens: int, error: str | None = None, **fields) -> StreamResult:
        ttfb = self.arrivals[0] * 1e3 if self.arrivals else None
        late_ms, late_at_s = worst_wait(self.arrivals, self.audio_before) or (None, None)
        return StreamResult(ok, ttfb, tokens, self.audio_s, error, late_ms, late_at_s, **fields)

    def ended(self, end: dict) -> StreamResult:
        """A stream that ran to its end: ok when the server's final metrics (`end`: tokens, and
        queue_ms where the door says it) came."""
        done = "tokens" in end
        return self.result(done, end.get("tokens", 0), None if done else "stream ended without metrics",
                           queue_ms=end.get("queue_ms"))


StreamFn = Callable[[str, int, float | None], Awaitable[StreamResult]]


async def hang_up_after(consume: Awaitable[StreamResult], cancel_after_s: float | None,
                        timeline: Timeline) -> StreamResult:
    """Run one stream, or hang up on it after `cancel_after_s` (a cancelled stream: what its
    `timeline` got until then)."""
    if cancel_after_s is None:
        return await consume
    try:
        return await asyncio.wait_for(consume, cancel_after_s)
    except asyncio.TimeoutError:
        return timeline.result(False, 0, None, cancelled=True)


class Progress:
    """One line on stderr: redrawn in place on a terminal, a line per level otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, label: str, done: int, total: int, failed: int) -> None:
        if self.tty:
            width = 30
            bar = "#" * (width * done // max(total, 1))
            self.stream.write(f"\r{label} [{bar:<{width}}] {done}/{total} streams, {failed} failed")
            self.stream.flush()

    def finish(self, line: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()


def ramp(max_concurrent: int) -> list[int]:
    """1, 2, 4 ... and N itself."""
    levels, n = [], 1
    while n < max_concurrent:
        levels.append(n)
        n *= 2
    return levels + [max_concurrent]


async def closed_loop(stream: StreamFn, concurrency: int, requests: int, workload: Workload, stagger_s: float,
                      progress: Progress, label: str, workers: range | None = None) -> list[StreamResult]:
    """Closed loop: `concurrency` workers, each making `requests` streams back to back; this call
    runs `workers` of them (all by default; `clients` deals them out to processes)."""
    workers = range(concurrency) if workers is None else workers
    total, results = len(workers) * requests, []

    async def worker(index: int) -> None:
        await asyncio.sleep(index * stagger_s / concurrency)
        for k in range(requests):
            text, cancel_after_s = workload.next()
            results.append(await stream(text, (index * 7919 + k * 104729 + concurrency) % 2**31, cancel_after_s))
            progress.update(label, len(results), total, sum(_failed(r) for r in results))

    await asyncio.gather(*(worker(i) for i in workers))
    return results


async def run_level(stream: StreamFn, concurrency: int, requests: int, workload: Workload, stagger_s: float,
                    progress: Progress, label: str) -> dict:
    """One closed-loop level in this process, summarized."""
    started = time.monotonic()
    results = await closed_loop(stream, concurrency, requests, workload, stagger_s, progress, label)
    return dict(concurrency=concurrency, **summarize(results, time.monotonic() - started))


async def open_loop(stream: StreamFn, rate_per_s: float, duration_s: float, workload: Workload,
                    progress: Progress, label: str, seed: int = 0) -> list[StreamResult]:
    """Open loop: streams arrive as a Poisson process at `rate_per_s` for `duration_s`, whatever
    the server does with the ones before (what a fleet meets when traffic rises)."""
    rng, tasks, results = random.Random(seed), [], []

    async def one(index: int, text: str, cancel_after_s: float | None) -> None:
        results.append(await stream(text, (index * 7919 + seed) % 2**31, cancel_after_s))
        progress.update(label, len(results), len(tasks), sum(_failed(r) for r in results))

    started = time.monotonic()
    at = rng.expovariate(rate_per_s)
    while at < duration_s:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        tasks.append(asyncio.create_task(one(len(tasks), *workload.next())))
        at += rng.expovariate(rate_per_s)
    await asyncio.gather(*tasks)
    return results


def _failed(result: StreamResult) -> bool:
    return not (result.ok or result.refused or result.cancelled)


def summarize(results: list[StreamResult], wall: float) -> dict:
    """One level's row: what the clients saw, the refused and cancelled ones apart."""
    total = len(results)
    ok = [r for r in results if r.ok]
    admitted = [r for r in results if r.admitted]
    queue = np.array([r.queue_ms for r in ok if r.queue_ms is not None])
    ttfb = np.array([r.ttfb_ms for r in admitted])
    pct = (lambda q: float(np.percentile(ttfb, q))) if len(ttfb) else (lambda q: None)
    late = np.array([r.late_ms for r in admitted if r.late_ms is not None])
    stalled_at = [r.late_at_s for r in admitted if not r.realtime and r.late_at_s is not None]
    errors = sorted({r.error for r in results if r.error and not r.refused})
    served = [r.realtime for r in results if not r.refused]
    return dict(
        streams=total, wall_s=wall,
        ttfb_p50_ms=pct(50), ttfb_p95_ms=pct(95), ttfb_p99_ms=pct(99),
        realtime_share=float(np.mean(served)) if served else 0.0,
        # Of the streams that got audio (the ones admission took on): how many never stalled.
        admitted_realtime_share=float(np.mean([r.realtime for r in admitted])) if admitted else None,
        refused=sum(r.refused for r in results), cancelled=sum(r.cancelled for r in results),
        failed=sum(_failed(r) for r in results),
        queue_p50_ms=float(np.percentile(queue, 50)) if len(queue) else None,
        queue_p95_ms=float(np.percentile(queue, 95)) if len(queue) else None,
        stall_p50_ms=float(np.percentile(late, 50)) if len(late) else None,
        stall_max_ms=float(late.max()) if len(late) else None,
        # Where in their audio the streams that stalled stalled worst (start-up or later).
        stall_at_s_p50=float(np.median(stalled_at)) if stalled_at else None,
        tokens_per_s=sum(r.tokens for r in ok) / wall if wall > 0 else 0.0,
        success_rate=(total - sum(_failed(r) for r in results)) / total if total else 0.0,
        mean_audio_s=float(np.mean([r.audio_s for r in ok])) if ok else 0.0,
        errors=errors[:5],
    )


def meets(row: dict, target_ttfb_ms: float) -> bool:
    return (row["success_rate"] == 1.0 and row["realtime_share"] == 1.0
            and row["ttfb_p95_ms"] is not None and row["ttfb_p95_ms"] <= target_ttfb_ms)

WARM_UP_TEXT = "Warming up."  # the stream each client sends before the levels


def _describe(row: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"  # noqa: E731
    return (f"concurrency {row['concurrency']}: TTFB p50 {fmt(row['ttfb_p50_ms'])} p95 {fmt(row['ttfb_p95_ms'])} "
            f"p99 {fmt(row['ttfb_p99_ms'])} ms, real-time {row['realtime_share']:.0%} "
            f"(worst stall {fmt(row['stall_max_ms'])} ms), "
            f"{row['tokens_per_s']:.0f} tok/s, success {row['success_rate']:.0%}, refused {row['refused']}")


async def run_bench(clients, mode: str, max_concurrent: int, requests: int, workload: Workload, stagger_s: float,
                    target_ttfb_ms: float, progress: Progress | None = None, capacity: int | None = None,
                    arrival_rates: tuple[float, ...] = (), duration_s: float = 30.0,
                    levels: list[int] | None = None) -> dict:
    """`mode`: scaling (the ramp to `max_concurrent`, or `levels`), tuning, all (both) or overload
    (closed loop at 1.5x and 2x `capacity`); `arrival_rates` adds an open-loop level for each rate.
    `clients` (a `clients.Clients`) runs the streams, in this process or spread over several."""
    progress = progress or Progress()
    measured: dict[int, dict] = {}

    async def level(n: int) -> dict:
        if n not in measured:
            row = dict(concurrency=n, **await clients.closed_level(n, requests, workload, stagger_s, progress,
                                                                  f"concurrency {n}"))
            row["meets_target"] = meets(row, target_ttfb_ms)
            measured[n] = row
            progress.finish(_describe(row))
        return measured[n]

    out: dict = {}
    async with clients:
        # The first request a server answers through a door pays that door's one-time costs (imports,
        # first allocations, a new connection): one stream before the levels, counted in none of them.
        await clients.target.stream(WARM_UP_TEXT, 0, cancel_after_s=1.0)
        if mode in ("scaling", "all"):
            out["scaling"] = [await level(n) for n in (levels or ramp(max_concurrent))]
        if mode in ("tuning", "all"):
            # Ramp until a level fails, then bisect between the last pass and the first failure.
            best, failed = 0, None
            for n in ramp(max_concurrent):
                if (await level(n))["meets_target"]:
                    best = n
                else:
                    failed = n
                    break
            while failed is not None and failed - best > 1:
                mid = (best + failed) // 2
                if (await level(mid))["meets_target"]:
                    best = mid
                else:
                    failed = mid
            out["tuning"] = dict(target_ttfb_ms=target_ttfb_ms, max_concurrent_meeting_target=best,
                                 searched_up_to=max_concurrent)
            progress.finish(f"tuning: largest concurrency with TTFB p95 <= {target_ttfb_ms:.0f} ms and every "
                            f"stream real-time: {best}")
        if mode == "overload":
            if not capacity:
                raise ValueError("overload needs --capacity (the concurrency the server keeps in real time)")
            out["overload"] = [dict(await level(round(factor * capacity)), capacity=capacity, factor=factor)
                               for factor in (1.5, 2.0)]
        if arrival_rates:
            out["open_loop"] = []
            for rate in arrival_rates:
                row = dict(arrival_rate_per_s=rate,
                           **await clients.open_level(rate, duration_s, workload, progress, f"{rate:g}/s"))
                progress.finish(f"open loop {rate:g} streams/s: refused {row['refused']}, "
                                f"admitted real-time {row['admitted_realtime_share']}")
                out["open_loop"].append(row)
    out["levels"] = [measured[n] for n in sorted(measured)]
    return out
