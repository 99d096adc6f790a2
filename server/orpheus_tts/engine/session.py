"""One request's state inside the engine, from admission to its last audio sample.

A session speaks a sequence of text pieces (one for a short request, several for long text or
text that streams in). Each piece is its own Orpheus prompt in the session's KV slot; the audio
of all pieces forms one stream. Only the engine thread mutates a session, except `cancel`,
`add_pieces` and `open_text`, which other threads call and which only touch locked fields; its
`state` changes only in the scheduler.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from orpheus_tts import orpheus
from orpheus_tts.codec.streaming import FrameAccumulator
from orpheus_tts.requests import SpeechRequest

_ids = itertools.count(1)


class SessionState(enum.Enum):
    PENDING = "pending"  # in the admission queue, no slot yet
    WAITING_TEXT = "waiting_text"  # holds a slot, has no piece to speak until more text arrives
    PREFILL = "prefill"  # its current piece's prompt must be prefilled
    DECODING = "decoding"  # generating audio tokens
    DRAINING = "draining"  # its piece is done; the piece's last audio is still being decoded
    FINISHED = "finished"


class Outcome(enum.Enum):
    OK = "ok"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"
    REFUSED = "refused"  # waited scheduler.max_queue_wait_s in the queue, never admitted


@dataclass
class Piece:
    text: str
    prompt: list[int]  # token ids, Orpheus prompt included
    budget: int  # most audio tokens this piece may take


@dataclass
class SessionMetrics:
    """What a finished request reports (all times in seconds since the request arrived)."""

    ttfb_s: float | None = None
    tokens: int = 0  # generated ids, end-of-speech included
    frames: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    pieces: int = 0
    invalid_tokens: int = 0
    queue_s: float | None = None
    adapter: str | None = None  # the LoRA adapter it ran on

    @property
    def real_time_factor(self) -> float | None:
        """Audio seconds produced per wall-clock second (>= 1 plays without stalls)."""
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else None


@dataclass
class AudioChunk:
    samples: np.ndarray  # float32 mono 24 kHz in [-1, 1]
    first_frame: int  # index of its first frame within the whole stream
    frames: int
    piece: int  # which text piece it belongs to


@dataclass
class SessionEnd:
    outcome: Outcome
    metrics: SessionMetrics
    error: str | None = None


@dataclass(eq=False)
class Session:
    request: SpeechRequest
    seed: int
    emit: Callable[[AudioChunk | SessionEnd], None]  # called from the engine thread
    id: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.monotonic)
    state: SessionState = SessionState.PENDING
    slot: int | None = None
    adapter_place: int | None = None  # its LoRA adapter's place in the pool, once admitted
    failure: str | None = None  # why admission could not start it (its adapter would not load)
    adapter_loading: bool = False  # queued while its adapter is read from disk (not refused for the wait)
    pieces: deque[Piece] = field(default_factory=deque)
    piece: Piece | None = None
    piece_index: int = -1
    accumulator: FrameAccumulator | None = None
    piece_tokens: int = 0  # ids generated for the current piece and read back
    ids_requested: int = 0  # ids queued for the current piece (the last ones may not be read back yet)
    last_served: int = -1  # when it was last picked for a decode step (for round-robin)
    tokens_since_flush: int = 0
    prefill_since: float = 0.0  # when its current piece became ready to prefill
    frames_emitted: int = 0  # frames whose decode has been queued (numbers the stream's frames)
    frames_sent: int = 0  # frames whose audio reached the receiver (what metrics report)
    playback_started: float | None = None  # when the first audio went out: the client's play clock
    metrics: SessionMetrics = field(default_factory=SessionMetrics)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _incoming: list[Piece] = field(default_factory=list)
    _text_closed: bool = True
    _cancelled: bool = False

    # -- called from any thread -------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def add_pieces(self, pieces: list[Piece], close: bool) -> None:
        with self._lock:
            self._incoming.extend(pieces)
            self._text_closed = close

    def open_text(self) -> None:
        """Mark the text as still arriving: the session waits for pieces instead of ending."""
        with self._lock:
            self._text_closed = False

    def projected_tokens(self) -> tuple[int, int, int] | None:
        """What this stream will still ask of the decode steps, for capacity admission: (context
        tokens now, ids still to generate, the largest context any of its pieces reaches), from its
        current piece's remaining budget and the budgets of the pieces queued behind it (each
        starts over from its own prompt). None while it has no text to speak."""
        current = self.piece if self.state in (SessionState.PREFILL, SessionState.DECODING) else None
        # The usual case (asked once a step of every stream under overload), read unlocked: a piece
        # arriving meanwhile counts at the next step.
        if not self.pieces and not self._incoming:
            if current is None:
                return None
            prompt = len(current.prompt)
            return prompt + self.ids_requested, current.budget - self.ids_requested, prompt + current.budget
        with self._lock:
            queued = [*self.pieces, *self._incoming]
        done = self.ids_requested if current is not None else 0  # of the first piece below
        pieces = [current, *queued] if current is not None else queued
        return (len(pieces[0].prompt) + done, sum(p.budget for p in pieces) - done,
                max(len(p.prompt) + p.budget for p in pieces))

    # -- engine thread only -------------------------------------------------------------
    def playback_lead_s(self, now: float) -> float:
        """How much audio the client holds beyond what has played by `now`, if it started
        playing at the first chunk: the time this stream's next chunk has before it stalls."""
        if self.playback_started is None:
            return 0.0
        return self.playback_started + self.frames_emitted * orpheus.FRAME_SECONDS - now

    def take_incoming(self) -> bool:
        """Move newly arrived pieces into the queue; True if the text is complete."""
        with self._lock:
            self.pieces.extend(self._incoming)
            self._incoming.clear()
            return self._text_closed

    def start_next_piece(self, context_frames: int, lookahead_frames: int, window_frames: int = 0) -> bool:
        """Begin the next queued piece (fresh prompt in the same slot); False if none is queued."""
        if not self.pieces:
            return False
        self.piece = self.pieces.popleft()
        self.piece_index += 1
        self.accumulator = FrameAccumulator(context_frames, lookahead_frames, window_frames)
        self.piece_tokens = 0
        self.ids_requested = 0
        self.tokens_since_flush = 0
        self.prefill_since = time.monotonic()
        return True

    @property
    def in_ttfb_priority(self) -> bool:
        return self.metrics.ttfb_s is None

    def wants_token(self, max_context: int) -> bool:
        """True if a decode step may be queued for it: its piece still has budget and room in
        the slot once every id already queued is counted (the step feeds id k at position
        prompt + k - 1). An end-of-speech among those ids is seen only when they are read."""
        k = self.ids_requested
        return self.state is SessionState.DECODING and k < self.piece.budget and self._fits(k, max_context)

    def piece_done(self, token: int, max_context: int) -> bool:
        """True once the current piece must stop: end-of-speech, its budget, or the slot is full."""
        return (
            token == orpheus.END_OF_SPEECH
            or self.piece_tokens >= self.piece.budget
            or not self._fits(self.piece_tokens, max_context)
        )

    def _fits(self, ids: int, max_context: int) -> bool:
        """Whether id number `ids` of the piece can still be fed: it goes at position prompt + ids - 1."""
        return len(self.piece.prompt) + ids - 1 < max_context
