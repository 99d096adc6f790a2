"""Hooks the engine calls as it works, so metrics live outside the engine.

The default does nothing; the server's Prometheus metrics subclass it. Hooks run on the
engine thread and must be quick.
"""

from __future__ import annotations


class EngineObserver:
    def on_step(self, seconds: float, decode_batch: int, prefill_batch: int, stats) -> None:
        """After each step that did work: its wall time, batch sizes, and the engine's stats."""

    def on_idle(self, stats) -> None:
        """When a loop iteration found nothing to do."""

    def on_first_audio(self, ttfb_s: float) -> None:
        """A session's first audio chunk left the engine, `ttfb_s` after the request arrived."""

    def on_session_end(self, outcome, metrics) -> None:
        """A session ended (any outcome) with its final metrics."""
