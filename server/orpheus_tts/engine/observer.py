"""What the engine reports: hooks it calls as it works, its stats, and where its time went.

The observer's default does nothing; the server's Prometheus metrics subclass it. Hooks run on
the engine thread and must be quick.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Totals since start (sessions, tokens, decode steps) and the pool now (sessions, KV slots):
    what `GetStats` and `/v1/stats` report."""

    total_sessions: int
    completed_sessions: int
    rejected_sessions: int
    active_sessions: int
    pending_sessions: int
    max_concurrent: int
    used_slots: int
    free_slots: int
    total_tokens: int
    total_batches: int
    refused_sessions: int = 0  # refused after waiting scheduler.max_queue_wait_s in the queue
    capacity: int = 0  # streams the engine can keep in real time now (engine/capacity.py)
    step_cost: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the fit behind it: fixed, per row, per context token (s)
    stream_context: float = 0.0  # the context (tokens) it takes an admitted stream to hold over its life


@dataclass
class EngineTimings:
    """Where the engine thread's time went, cumulative seconds (benchmarks read differences);
    the parts are disjoint.

    prefill/decode: waiting for a forward's sampled ids; snac_wait: waiting for audio the GPU
    had not finished decoding; snac_launch: planning and queueing audio decodes; host:
    everything else in a step (scheduling, queueing forwards, bookkeeping, sending audio to
    the sessions' receivers)."""

    steps: int = 0
    step_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    snac_launch_s: float = 0.0
    snac_wait_s: float = 0.0

    @property
    def host_s(self) -> float:
        return self.step_s - self.prefill_s - self.decode_s - self.snac_launch_s - self.snac_wait_s

    def count_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_s += seconds


class EngineObserver:
    def on_startup_phase(self, phase: str, seconds: float) -> None:
        """A start-up phase (weights, compile_cache, graphs, warm_up) took `seconds`."""

    def on_engine_mismatch(self, fields: list[str]) -> None:
        """The engine's artifacts did not match these fields; the server compiles at start."""

    def on_step(self, seconds: float, decode_batch: int, prefill_batch: int, stats: EngineStats) -> None:
        """After each step that did work: its wall time, batch sizes, and the engine's stats."""

    def on_idle(self, stats: EngineStats) -> None:
        """When a loop iteration found nothing to do."""

    def on_first_audio(self, ttfb_s: float) -> None:
        """A session's first audio chunk left the engine, `ttfb_s` after the request arrived."""

    def on_session_end(self, outcome, metrics) -> None:
        """A session ended (any outcome) with its final metrics."""
