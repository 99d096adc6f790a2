"""Audio out: when each stream's next chunk is due, and the batched SNAC decodes that make it.

`ChunkPolicy` decides, from a session's tokens and its client's buffer, which frames to decode
now. `AudioPipeline` queues those windows as batched SNAC calls (on a GPU on their own stream,
beside the next forward) and hands back their samples at the next step, in the order queued:
every frame exactly once, none dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.codec.streaming import PendingAudio, Window, launch_windows
from orpheus_tts.config import SchedulerConfig
from orpheus_tts.engine.observer import EngineTimings
from orpheus_tts.engine.session import Session, SessionState

log = logging.getLogger("orpheus_tts.engine")


class ChunkPolicy:
    """A stream goes frame by frame with no lookahead (as at its start) while its client holds
    less audio than waiting for a lookahead frame and a two-frame chunk would take at the
    current step time, plus a margin: under load the steps approach real time, and the bigger
    chunks would arrive after the audio before them has played.

    Reads the scheduler settings at every call: they are live (`config.LIVE_KEYS`)."""

    def __init__(self, scheduler: SchedulerConfig, lookahead_frames: int):
        self.config = scheduler
        self.lookahead_frames = lookahead_frames

    def due_windows(self, sessions: list[Session], ended: list[Session], step_estimate_s: float,
                    now: float) -> list[tuple[Session, Window]]:
        """The window each session should decode now (sessions whose piece ended: all the rest)."""
        sched = self.config
        tokens_to_bigger_chunk = sched.flush_every_n_tokens + orpheus.TOKENS_PER_FRAME * self.lookahead_frames
        decode_steps = 2 if sched.overlap_steps else 1  # steps from an id to its audio being sent
        lead_needed_s = (tokens_to_bigger_chunk + decode_steps) * step_estimate_s + sched.adaptive_margin_s
        ended_ids = {s.id for s in ended}
        jobs = []
        for session in sessions:
            if session.state is SessionState.FINISHED:  # cancelled since its tokens came
                continue
            final = session.id in ended_ids
            startup = (session.frames_emitted < sched.flush_startup_frames
                       or (sched.adaptive_chunks and session.playback_lead_s(now) < lead_needed_s))
            if session.in_ttfb_priority:
                threshold = sched.flush_first_n_tokens
            elif startup:
                threshold = orpheus.TOKENS_PER_FRAME
            else:
                threshold = sched.flush_every_n_tokens
            if final or session.tokens_since_flush >= threshold:
                window = session.accumulator.next_window(final, startup)
                if window is not None:
                    session.tokens_since_flush = 0
                    jobs.append((session, window))
        return jobs


@dataclass
class QueuedChunk:
    """A chunk whose decode is queued: its frames' numbers within the whole stream (all pieces)."""

    session: Session
    first_frame: int
    frames: int
    piece: int


@dataclass
class AudioDelivery:
    """What one step's decodes produced: each chunk's samples (None where the decode failed),
    and the sessions whose piece these chunks ended."""

    chunks: list[QueuedChunk]
    samples: list[np.ndarray] | None
    ended: list[Session]
    error: Exception | None = None


class AudioPipeline:
    def __init__(self, codec: SnacCodec, graph_max_batch: int, timings: EngineTimings):
        self.codec = codec
        self.graph_max_batch = graph_max_batch
        self.timings = timings
        self._stream = torch.cuda.Stream(codec.device) if codec.device.type == "cuda" else None
        self._pending: PendingAudio | None = None
        self._chunks: list[QueuedChunk] = []
        self._ended: list[Session] = []

    @property
    def sessions(self) -> list[Session]:
        """The sessions whose audio the last step queued, and those whose piece it ended."""
        return [chunk.session for chunk in self._chunks] + self._ended

    @property
    def busy(self) -> bool:
        """Whether decodes queued by the last step are still to be sent."""
        return self._pending is not None

    def launch(self, jobs: list[tuple[Session, Window]], ended: list[Session]) -> None:
        """Queue the decode of every job's window, batched across sessions; raises if the
        codec fails (nothing is then pending)."""
        if self._pending is not None:  # queued audio would be overwritten, never sent
            raise RuntimeError("the last step's audio must be sent before more is queued")
        chunks = []
        for session, window in jobs:
            frames = window.emit_to - window.emit_from
            chunks.append(QueuedChunk(session, session.frames_emitted, frames, session.piece_index))
            session.frames_emitted += frames
        self._ended = ended
        self._pending = launch_windows(self.codec, [(s.accumulator, w) for s, w in jobs], self._stream,
                                       self.graph_max_batch)
        self._chunks = chunks

    def collect(self) -> AudioDelivery | None:
        """The audio queued by the last step (waiting for the GPU if it has not finished), or
        None if nothing was queued."""
        pending, chunks, ended = self._pending, self._chunks, self._ended
        if pending is None:
            return None
        self._pending, self._chunks, self._ended = None, [], []
        started = time.perf_counter()
        try:
            return AudioDelivery(chunks, pending.samples(), ended)
        except Exception as exc:
            log.exception("SNAC decode failed for %d sessions", len(chunks))
            return AudioDelivery(chunks, None, ended, exc)
        finally:
            self.timings.snac_wait_s += time.perf_counter() - started

    def abandon(self, ended: list[Session]) -> AudioDelivery:
        """After a failed `launch`: the delivery of nothing, so the ended pieces still move on."""
        self._pending, self._chunks, self._ended = None, [], []
        return AudioDelivery([], [], ended)
