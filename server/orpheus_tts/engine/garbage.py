"""Python's full garbage collections, moved to moments when no stream is waiting.

A full collection walks every object the collector tracks (all but those frozen at start-up)
and stops the engine thread meanwhile: under load on an H100 one took 60 to 155 ms
(`bench/results/h100-prefill-ab/`), longer than the audio a young stream holds. With
`scheduler.full_gc_when_idle`, automatic full collections are off (young generations are still
collected as usual) and the engine runs them itself when it has nothing to do, or, under load
that never pauses, at most once every `max_interval_s`, so garbage in reference cycles is still
reclaimed.
"""

from __future__ import annotations

import gc
import time

_NEVER = 2**31 - 1  # the largest threshold gc.set_threshold takes
_YOUNG_COLLECTIONS_PER_FULL = 10  # CPython's default: a full collection is due after this many


class FullCollections:
    def __init__(self, max_interval_s: float = 300.0):
        self.max_interval_s = max_interval_s
        self._saved: tuple[int, int, int] | None = None  # thresholds to restore; None: not managing
        self._last = time.monotonic()

    @property
    def managing(self) -> bool:
        return self._saved is not None

    def manage(self, on: bool) -> None:
        """Take full collections over from the interpreter, or hand them back."""
        if on and self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(self._saved[0], self._saved[1], _NEVER)
        elif not on and self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def tick(self, idle: bool) -> bool:
        """Run a full collection if one is due and this is a good moment; True if it ran."""
        if self._saved is None or gc.get_count()[2] < _YOUNG_COLLECTIONS_PER_FULL:
            return False
        now = time.monotonic()
        if not idle and now - self._last < self.max_interval_s:
            return False
        gc.collect()
        self._last = now
        return True
