"""Streaming: turn one stream of audio tokens into audio chunks, every frame exactly once.

Each chunk decodes a window of frames: at least `context_frames` already-emitted frames on the
left (decoded again, not emitted again) so the join is smooth, the new frames, and
`lookahead_frames` not-yet-emitted frames on the right so the last emitted frame has context.
Where the stream has the frames, the left context is widened until the window is
`window_frames` long: then nearly every window of every session has the same length and they
all decode in one batched call (a few extra frames of context cost less than another call).
The first chunks skip the lookahead (`startup`: while the client holds little audio, a frame
sent now matters more than its last few milliseconds of right context) and the last one emits
everything, the tail included. Windows of equal length from many sessions are decoded in
one batched SNAC call (`launch_windows`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SnacCodec


@dataclass(frozen=True)
class Window:
    """Frames [start, end) are decoded; the samples of frames [emit_from, emit_to) are emitted."""

    start: int
    end: int
    emit_from: int
    emit_to: int


class FrameAccumulator:
    """Collects one stream's audio tokens into SNAC frames and plans what to decode next."""

    def __init__(self, context_frames: int, lookahead_frames: int, window_frames: int = 0):
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self.window_frames = window_frames
        self.frames: list[list[int]] = []
        self._partial: list[int] = []
        self.audio_tokens = 0  # valid audio tokens accepted
        self.invalid_tokens = 0  # ids not valid at their frame position (unconstrained decoding only)
        self.emitted_frames = 0

    @property
    def frame_position(self) -> int:
        """Position (0..6) of the next audio token within its frame."""
        return len(self._partial)

    def push(self, token_id: int) -> bool:
        """Accept one generated id; False (and skipped) if it is not a valid audio token here."""
        code = orpheus.token_to_code(token_id, len(self._partial))
        if code is None:
            self.invalid_tokens += 1
            return False
        self._partial.append(code)
        self.audio_tokens += 1
        if len(self._partial) == orpheus.TOKENS_PER_FRAME:
            self.frames.append(self._partial)
            self._partial = []
        return True

    def next_window(self, final: bool, startup: bool = False) -> Window | None:
        """The window to decode now, or None if nothing new can be emitted yet."""
        n = len(self.frames)
        if final or startup or self.emitted_frames == 0:
            emit_to = n
        else:
            emit_to = n - self.lookahead_frames
        if emit_to <= self.emitted_frames:
            return None
        end = min(n, emit_to + self.lookahead_frames)
        start = max(0, min(self.emitted_frames - self.context_frames, end - self.window_frames))
        return Window(start, end, self.emitted_frames, emit_to)

    def window_codes(self, window: Window) -> list[list[int]]:
        return self.frames[window.start : window.end]

    def mark_emitted(self, window: Window) -> None:
        assert window.emit_from == self.emitted_frames, "frames must be emitted in order, once"
        self.emitted_frames = window.emit_to

    @property
    def pending_frames(self) -> int:
        return len(self.frames) - self.emitted_frames


class PendingAudio:
    """Decoded windows on their way to the host: `samples()` waits for them.

    On a GPU the decode and the copy to (pinned) host memory are queued on the caller's
    stream and this returns at once, so SNAC can run beside the next language-model step.
    """

    def __init__(self, jobs: list[tuple[FrameAccumulator, Window]], parts: list[tuple[list[int], torch.Tensor]],
                 event: torch.cuda.Event | None):
        self.jobs, self._parts, self._event = jobs, parts, event

    def samples(self) -> list[np.ndarray]:
        """Each job's emitted samples, in job order."""
        if self._event is not None:
            self._event.synchronize()
        out: list[np.ndarray | None] = [None] * len(self.jobs)
        spf = orpheus.SAMPLES_PER_FRAME
        for indices, audio in self._parts:
            audio = audio.numpy()
            for row, i in enumerate(indices):
                window = self.jobs[i][1]
                lo, hi = (window.emit_from - window.start) * spf, (window.emit_to - window.start) * spf
                out[i] = audio[row, lo:hi]
        return out  # type: ignore[return-value]


def launch_windows(codec: SnacCodec, jobs: list[tuple[FrameAccumulator, Window]],
                   stream: torch.cuda.Stream | None = None, max_batch: int = 0) -> PendingAudio:
    """Queue the decode of every job's window, batching windows of equal length (at most
    `max_batch` per call when given), and mark the frames emitted (the next window of a
    session starts after them)."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, (_, window) in enumerate(jobs):
        by_length[window.end - window.start].append(i)
    size = max_batch or len(jobs)
    groups = [same[i:i + size] for same in by_length.values() for i in range(0, len(same), size)]
    parts, event = [], None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for indices in groups:
            codes = torch.tensor([jobs[i][0].window_codes(jobs[i][1]) for i in indices], dtype=torch.int64)
            audio = codec.decode(codes)
            if audio.is_cuda:
                host = torch.empty(audio.shape, dtype=audio.dtype, pin_memory=True)
                audio = host.copy_(audio, non_blocking=True)
            parts.append((indices, audio))
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
    for acc, window in jobs:
        acc.mark_emitted(window)
    return PendingAudio(jobs, parts, event)

