"""Measures the server tests apply to audio: decoding windows at once, and the step at a join.

Test helpers, not product code: the engine decodes through `launch_windows` and smooths joins
with `JoinSmoother`; these say whether what it did was right.
"""

from __future__ import annotations

import numpy as np
import torch

from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.codec.streaming import FrameAccumulator, Window, launch_windows


def decode_windows(codec: SnacCodec, jobs: list[tuple[FrameAccumulator, Window]]) -> list[np.ndarray]:
    """Decode every job's window now (batched by length); returns emitted samples per job."""
    stream = torch.cuda.current_stream(codec.device) if codec.device.type == "cuda" else None
    return launch_windows(codec, jobs, stream).samples()


def join_steps(samples: np.ndarray, joins: list[int]) -> np.ndarray:
    """|x[j] - x[j-1]| at each join index j (the first sample of a new piece)."""
    samples = np.asarray(samples, dtype=np.float64)
    return np.array([abs(samples[j] - samples[j - 1]) for j in joins if 0 < j < len(samples)])


def typical_step(samples: np.ndarray, joins: list[int], percentile: float = 99.0) -> float:
    """The signal's normal sample-to-sample change: a high percentile of |diff| away from joins."""
    steps = np.abs(np.diff(np.asarray(samples, dtype=np.float64)))
    inside = np.ones(len(steps), dtype=bool)
    inside[[j - 1 for j in joins if 0 < j < len(samples)]] = False
    return float(np.percentile(steps[inside], percentile)) if inside.any() else 0.0
