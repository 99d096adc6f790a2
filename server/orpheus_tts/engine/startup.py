"""Start-up in phases (weights, compile cache, graphs, warm-up), timed and reported.

A slow start is what stops a fleet from scaling quickly; the breakdown says which phase to
blame, in the log and as `orpheus_tts_startup_seconds{phase}`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("orpheus_tts.engine")


class StartupPhases:
    def __init__(self, observer=None):
        self.observer = observer
        self.seconds: dict[str, float] = {}
        self._began = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
            if self.observer is not None:
                self.observer.on_startup_phase(name, self.seconds[name])

    def summary(self) -> str:
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        return f"start-up {time.monotonic() - self._began:.1f} s: {parts}"
