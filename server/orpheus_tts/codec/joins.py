"""Click-free joins between the text pieces of one stream.

Each piece of a long text is a fresh Orpheus prompt, so its audio starts wherever its first
SNAC frame starts, not where the previous piece stopped: the step across a join can be far
larger than any step inside the speech, which is heard as a click. `JoinSmoother` removes the
step without changing the sample count (the stream keeps exactly 2048 samples per frame) and
without holding audio back: the first samples of a new piece get the offset that makes them
continue from the previous piece's last sample, fading out over `ramp_samples` with a
raised-cosine, so the added slope stays far below speech's own sample-to-sample change.

A join is smooth when its step is no larger than the 99th percentile of the steps inside the
pieces (the tests measure it so).
"""

from __future__ import annotations

import numpy as np

DEFAULT_RAMP_SAMPLES = 120  # 5 ms at 24 kHz


class JoinSmoother:
    """Feed each chunk's samples and piece index in stream order; get the samples to send."""

    def __init__(self, ramp_samples: int = DEFAULT_RAMP_SAMPLES):
        n = np.arange(ramp_samples, dtype=np.float64)
        self._ramp = (0.5 * (1.0 + np.cos(np.pi * n / ramp_samples))).astype(np.float32)  # 1 -> ~0
        self._piece: int | None = None
        self._last = 0.0  # the last sample sent
        self._offset = 0.0  # the step being faded out
        self._ramp_at = len(self._ramp)  # how far into the ramp the stream is (done when at the end)

    def smooth(self, samples: np.ndarray, piece: int) -> np.ndarray:
        if not len(samples):
            return samples
        out = np.array(samples, dtype=np.float32)
        if self._piece is not None and piece != self._piece:
            self._offset, self._ramp_at = self._last - float(out[0]), 0
        self._piece = piece
        if self._ramp_at < len(self._ramp):
            ramp = self._ramp[self._ramp_at:self._ramp_at + len(out)]
            out[:len(ramp)] += np.float32(self._offset) * ramp
            np.clip(out, -1.0, 1.0, out=out)
            self._ramp_at += len(ramp)
        self._last = float(out[-1])
        return out

