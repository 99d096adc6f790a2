"""The load generator's clients, spread over processes so that the client is not what is measured.

One asyncio loop reading hundreds of streams falls behind before a server does: on two cores, an
httpx client spent about four times the CPU per chunk that uvicorn did sending it, and its loop,
not the server, then decides when a chunk "arrives". Real callers are many processes on many
machines. So a level's streams are dealt out to `processes` client processes, each with its own
loop and connections, kept for the whole run (connections stay warm between levels, as they do in
one process). Stream `i` of a level keeps the seed and start time it has in one process; the rows
are summarized over every process's streams. Each process also times its own loop while it runs
(how much later than asked a 10 ms sleep wakes), so a row says when its clients fell behind.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import pickle
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from orpheus_bench.load import WARM_UP_TEXT, Progress, StreamResult, closed_loop, open_loop, summarize
from orpheus_bench.workload import Workload

LAG_INTERVAL_S = 0.01
STREAMS_PER_PROCESS = 64  # the automatic split: one client process per this many streams


def auto_processes(max_streams: int, cpus: int) -> int:
    """One process per `STREAMS_PER_PROCESS` streams of the largest level, at most half the CPUs
    (the server on the same machine needs the rest)."""
    return max(1, min(-(-max_streams // STREAMS_PER_PROCESS), cpus // 2))


@dataclass
class Share:
    """What some of a level's streams saw: their results, when they ran (wall clock), how late
    their process's loop ran meanwhile."""

    results: list[StreamResult]
    started: float
    ended: float
    lags_ms: list[float]


async def _timed(run, lags_ms: list[float]) -> Share:
    """Run `run` (a coroutine giving results) with a loop-lag sampler beside it."""
    loop = asyncio.get_running_loop()

    async def sample() -> None:
        while True:
            asked = loop.time() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            lags_ms.append(max(0.0, loop.time() - asked) * 1e3)

    sampler = asyncio.create_task(sample())
    started = time.time()
    try:
        results = await run
    finally:
        sampler.cancel()
    return Share(results, started, time.time(), lags_ms)


def _share(target, job: dict, progress: Progress, label: str):
    """The coroutine of one process's part of a level."""
    if job["kind"] == "closed":
        return closed_loop(target.stream, job["concurrency"], job["requests"], Workload(*job["workload"]),
                           job["stagger_s"], progress, label, workers=job["workers"])
    return open_loop(target.stream, job["rate"], job["duration_s"], Workload(*job["workload"]), progress, label,
                     seed=job["seed"])


def _client_main(conn: Connection, blob: bytes) -> None:
    """A client process: enter the target, warm its door up, then run each share sent until None."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    target = pickle.loads(blob)
    quiet = Progress(io.StringIO())
    try:
        loop.run_until_complete(target.__aenter__())
        loop.run_until_complete(target.stream(WARM_UP_TEXT, 0, cancel_after_s=1.0))
        conn.send("ready")
        while (job := conn.recv()) is not None:
            conn.send(loop.run_until_complete(_timed(_share(target, job, quiet, ""), [])))
        loop.run_until_complete(target.__aexit__(None, None, None))
    except BaseException as exc:  # the parent raises it: a client that cannot run invalidates the level
        conn.send(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
    finally:
        loop.close()


class Clients:
    """Where a run's streams come from: this process's loop (`processes` 1, and always for a target
    that is not over the network), or that many client processes."""

    def __init__(self, target, processes: int = 1):
        if processes < 1:
            raise ValueError(f"--client-processes must be at least 1, got {processes}")
        self.target, self.processes = target, processes
        self._blob = pickle.dumps(target) if processes > 1 else b""  # before entering: no live connections
        self._pipes: list[tuple[multiprocessing.Process, Connection]] = []

    async def __aenter__(self) -> "Clients":
        await self.target.__aenter__()
        if self.processes > 1:
            spawn = multiprocessing.get_context("spawn")  # no copy of this process' gRPC or loop state
            for _ in range(self.processes):
                mine, theirs = spawn.Pipe()
                proc = spawn.Process(target=_client_main, args=(theirs, self._blob), daemon=True)
                proc.start()
                self._pipes.append((proc, mine))
            await asyncio.gather(*(asyncio.to_thread(_reply, conn) for _, conn in self._pipes))  # each "ready"
        return self

    async def __aexit__(self, *exc) -> None:
        for proc, conn in self._pipes:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, _ in self._pipes:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
        self._pipes = []
        await self.target.__aexit__(*exc)

    async def closed_level(self, concurrency: int, requests: int, workload: Workload, stagger_s: float,
                           progress: Progress, label: str) -> dict:
        """`load.closed_loop` over every process; the level's summary with the clients' lag."""
        if not self._pipes:
            return _summary([await _timed(closed_loop(self.target.stream, concurrency, requests, workload,
                                                      stagger_s, progress, label), [])], 1)
        jobs = [dict(kind="closed", concurrency=concurrency, requests=requests, stagger_s=stagger_s,
                     workers=range(p, concurrency, self.processes), workload=_workload(workload, concurrency, p))
                for p in range(self.processes)]
        return _summary(await self._run(jobs), self.processes)

    async def open_level(self, rate_per_s: float, duration_s: float, workload: Workload, progress: Progress,
                         label: str, seed: int = 0) -> dict:
        """`load.open_loop`: each of P processes draws arrivals at rate/P (together still a Poisson
        process at the rate)."""
        if not self._pipes:
            return _summary([await _timed(open_loop(self.target.stream, rate_per_s, duration_s, workload, progress,
                                                    label, seed), [])], 1)
        jobs = [dict(kind="open", rate=rate_per_s / self.processes, duration_s=duration_s, seed=seed * 1009 + p,
                     workload=_workload(workload, round(rate_per_s), p)) for p in range(self.processes)]
        return _summary(await self._run(jobs), self.processes)

    async def _run(self, jobs: list[dict]) -> list[Share]:
        for (_, conn), job in zip(self._pipes, jobs):
            conn.send(job)
        return list(await asyncio.gather(*(asyncio.to_thread(_reply, conn) for _, conn in self._pipes)))


def _reply(conn: Connection):
    reply = conn.recv()
    if isinstance(reply, Exception):
        raise RuntimeError(f"a client process failed: {type(reply).__name__}: {reply}") from reply
    return reply


def _workload(workload: Workload, level: int, process: int) -> tuple:
    """A process's own workload (same kind and text), seeded by the level and the process so that
    runs repeat."""
    return workload.kind, workload.text, level * 1000 + process


def _summary(shares: list[Share], processes: int) -> dict:
    results = [r for share in shares for r in share.results]
    wall = max(s.ended for s in shares) - min(s.started for s in shares)
    lags = np.array([lag for share in shares for lag in share.lags_ms])
    return dict(**summarize(results, wall), client_processes=processes,
                client_lag_p99_ms=float(np.percentile(lags, 99)) if len(lags) else None,
                client_lag_max_ms=float(lags.max()) if len(lags) else None)
