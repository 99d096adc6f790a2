"""Who runs this step, and the one owner of every session's state: pool, queue, batches, outcomes.

The pool holds at most `max_concurrent_sessions` sessions, each with a KV slot, and (with
`admission=capacity`) at most as many as the engine can keep in real time (`engine/capacity.py`).
Behind it a bounded queue (`max_pending_sessions`); a request that finds it full is refused at
once (`QueueFullError`), one still queued after `max_queue_wait_s` is refused then
(`Outcome.REFUSED`): never parked without bound. Each step decodes up to `max_batch_size`
sessions: sessions still waiting for their first audio go first (at most
`ttfb_priority_tokens` tokens each), the rest in least-recently-run order, so that with more
sessions than batch places each is run every few steps and none starves.

Every change of a session's `state` happens here (as vLLM's scheduler alone changes request
state): admission, a piece starting, its forward queued, its ids taken (`take_tokens`, where
end-of-speech and budgets end a piece), its last audio sent, and release.

    PENDING -> WAITING_TEXT -> PREFILL -> DECODING -> DRAINING -> WAITING_TEXT ... -> FINISHED
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from orpheus_tts import orpheus
from orpheus_tts.config import CodecConfig, SchedulerConfig
from orpheus_tts.engine.kv_cache import SlotAllocator
from orpheus_tts.engine.session import Outcome, Session, SessionState
from orpheus_tts.errors import QueueFullError
from orpheus_tts.model.lora import AdapterError


log = logging.getLogger("orpheus_tts.engine")

_MIN_RATE_SPAN_S = 0.1  # the shortest span an arrival rate is measured over
REFUSED_RETRY_AFTER_S = 1  # what a request refused after queueing is told (Retry-After)


@dataclass
class SchedulerCounters:
    total_sessions: int = 0  # ever admitted to the queue
    completed_sessions: int = 0
    rejected_sessions: int = 0  # refused because the queue was full
    refused_sessions: int = 0  # refused after waiting max_queue_wait_s in the queue
    total_tokens: int = 0
    total_batches: int = 0  # decode steps run
    total_prefills: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: SlotAllocator, codec: CodecConfig):
        self.config = config
        self.allocator = allocator
        self.codec = codec  # how each piece's frames are windowed
        self.pending: deque[Session] = deque()
        self.active: list[Session] = []
        self.counters = SchedulerCounters()
        self._serial = 0  # increases with every pick: least recently served goes first, ties impossible
        self._lock = threading.Lock()  # guards `pending`: submit runs on other threads

    # -- any thread --------------------------------------------------------------------
    def submit(self, session: Session) -> None:
        with self._lock:
            waiting_beyond_pool = len(self.pending) - self.allocator.free_count
            if waiting_beyond_pool >= self.config.max_pending_sessions:
                self.counters.rejected_sessions += 1
                raise QueueFullError(waiting_beyond_pool, self.config.max_pending_sessions, retry_after_s=1)
            self.pending.append(session)
            self.counters.total_sessions += 1

    @property
    def pending_count(self) -> int:
        return len(self.pending)

    # -- engine thread -----------------------------------------------------------------
    def admit(self, fits: Callable[[Session], bool] | None = None,
              adapter_place: Callable[[Session], int | None] | None = None) -> list[Session]:
        """Give queued sessions free slots, oldest first, while `fits` says the next one fits beside
        those admitted (`Admission.fits`; None: slots alone decide), so none overtakes an older one
        that does not; returns the newly admitted ones (and the cancelled
        ones found on the way, and those whose adapter failed to load, which get no slot). A session on a LoRA adapter also needs its
        place in the pool: `adapter_place` gives it, or None while it cannot yet (its adapter is
        loading, or every place is held); such a session keeps its turn and those behind it go on."""
        admitted, waiting = [], []
        with self._lock:
            while self.pending:
                session = self.pending[0]
                if not session.cancelled and not (self.allocator.free_count and (fits is None or fits(session))):
                    break
                self.pending.popleft()
                if session.cancelled:
                    admitted.append(session)  # the engine ends it without a slot
                    continue
                if session.request.adapter is not None:
                    try:
                        session.adapter_place = adapter_place(session) if adapter_place else None
                    except Exception as exc:  # its files cannot be served (or a bug): the engine ends it alone
                        if not isinstance(exc, AdapterError):
                            log.exception("adapter %s: admission failed", session.request.adapter)
                        session.failure = str(exc) or type(exc).__name__
                        admitted.append(session)
                        continue
                    if session.adapter_place is None:
                        waiting.append(session)
                        continue
                session.slot = self.allocator.allocate()
                session.state = SessionState.WAITING_TEXT
                self.active.append(session)
                admitted.append(session)
            self.pending.extendleft(reversed(waiting))
        return admitted

    def take_ended(self, now: float) -> list[tuple[Session, Outcome, str | None]]:
        """Sessions to end now, queued or running: cancelled ones, and those older than
        `session_timeout_s`, with their outcome and error. Queued ones leave the queue here: the
        caller must finish every session returned."""
        timeout, wait = self.config.session_timeout_s, self.config.max_queue_wait_s

        def verdict(session: Session, queued: bool) -> tuple[Session, Outcome, str | None]:
            if session.cancelled:
                return session, Outcome.CANCELLED, None
            if queued:
                self.counters.refused_sessions += 1
                return session, Outcome.REFUSED, (
                    f"server at capacity: waited {now - session.created:.1f} s in the queue (max_queue_wait_s="
                    f"{wait:g}) with {len(self.active)} streams admitted; retry after {REFUSED_RETRY_AFTER_S} s")
            return session, Outcome.TIMEOUT, f"exceeded session_timeout_s={timeout}"

        queued = [verdict(s, True) for s in self.drain_pending(  # one waiting for its adapter to load is not refused
            lambda s: s.cancelled or now - s.created > (timeout if s.adapter_loading else min(wait, timeout)))]
        return queued + [verdict(s, False) for s in self.active if s.cancelled or now - s.created > timeout]

    def drain_pending(self, predicate) -> list[Session]:
        """Remove and return queued sessions matching `predicate` (cancelled or timed out)."""
        with self._lock:
            gone = [s for s in self.pending if predicate(s)]
            for session in gone:
                self.pending.remove(session)
        return gone

    def release(self, session: Session) -> None:
        """Take a finished session out of the pool and free its slot for the next one."""
        if session in self.active:
            self.active.remove(session)
        if session.slot is not None:
            self.allocator.free(session.slot)
            session.slot = None
        session.state = SessionState.FINISHED
        self.counters.completed_sessions += 1

    def start_pieces(self) -> list[Session]:
        """Sessions between pieces start their next one; returns those whose text is complete
        and fully spoken (theirs to finish)."""
        codec, done = self.codec, []
        for session in self.active:
            if session.state is SessionState.WAITING_TEXT:
                closed = session.take_incoming()
                if session.start_next_piece(codec.context_frames, codec.lookahead_frames, codec.window_frames):
                    session.state = SessionState.PREFILL
                elif closed:
                    done.append(session)
        return done

    def launched(self, sessions: list[Session]) -> None:
        """A forward that samples one more id for each of `sessions` was queued."""
        for session in sessions:
            session.state = SessionState.DECODING  # after a prefill: its first id is on the way
            session.ids_requested += 1

    def take_tokens(self, sessions: list[Session], pieces: list[int], tokens: list[int]) -> list[Session]:
        """A step's sampled ids, one per row: feed each session's frames and end its piece at
        end-of-speech, its budget or a full slot; returns the sessions whose piece ended (DRAINING:
        not decoded again until their last audio is out).

        A row whose session finished, or whose piece ended, after the step was queued (possible
        with overlap_steps) sampled a spare id: it is dropped, as if never asked for."""
        ended = []
        max_context = self.config.max_context_tokens
        for session, piece, token in zip(sessions, pieces, tokens):
            if session.state is not SessionState.DECODING or session.piece_index != piece:
                continue
            session.metrics.tokens += 1
            session.piece_tokens += 1
            self.counters.total_tokens += 1
            if token != orpheus.END_OF_SPEECH:
                if session.accumulator.push(token):
                    session.tokens_since_flush += 1
                else:
                    session.metrics.invalid_tokens += 1
            if session.piece_done(token, max_context):
                session.state = SessionState.DRAINING
                ended.append(session)
        return ended

    def pieces_sent(self, ended: list[Session]) -> None:
        """The last audio of these sessions' pieces has gone out: they may start the next one."""
        for session in ended:
            if session.state is SessionState.DRAINING:
                session.state = SessionState.WAITING_TEXT

    def pick_prefill(self, max_sessions: int | None = None, step_cost: Callable[[int], float] | None = None,
                     max_tokens: Callable[[list[Session], float], int | None] | None = None) -> list[Session]:
        """Sessions whose prompt to prefill this step, oldest first, within the prompt-token budget
        and what `max_tokens` gives (the tokens the playing streams can spare, `Admission.prefill_tokens`;
        the oldest prompt goes all the same), and at most `max_sessions` (the largest prefill graph).

        While other sessions decode, a prefill short of a full batch waits until its oldest
        prompt has waited `prefill_wait_ms`: a burst of arrivals then shares one prefill instead
        of adding one to every step, each of which would slow every running stream. It waits
        only if the steps of the next second would take at least `prefill_wait_min_load` of the
        real-time step (`step_cost` gives a step's seconds for a batch size): the rows decoding
        now plus the prompts a second brings at the recent rate. Under lighter load a prefill
        costs nobody their real time, and waiting would only add to its TTFB; the arrivals
        count in, so a burst that will load the GPU waits from its start."""
        limit = min(self.config.max_batch_size, max_sessions or self.config.max_batch_size)
        waiting = [s for s in self.active if s.state is SessionState.PREFILL]
        if not waiting:
            return []
        if len(waiting) < limit and self.config.prefill_wait_ms > 0:
            now = time.monotonic()
            waited_s = now - min(s.prefill_since for s in waiting)
            if waited_s * 1e3 < self.config.prefill_wait_ms and self._worth_waiting(now, step_cost):
                return []
        chosen, tokens = [], 0
        spare = max_tokens(self.active, time.monotonic()) if max_tokens is not None else None
        budget = self.config.max_prefill_tokens if spare is None else min(spare, self.config.max_prefill_tokens)
        for session in waiting:
            need = len(session.piece.prompt)
            if chosen and tokens + need > budget:
                break
            chosen.append(session)
            tokens += need
            if len(chosen) == limit:
                break
        return chosen

    def _worth_waiting(self, now: float, step_cost: Callable[[int], float] | None) -> bool:
        """Whether others decode and, with `prefill_wait_min_load`, the next second's steps would
        load the GPU that much (the projection is skipped when any load will do)."""
        max_context = self.config.max_context_tokens
        if self.config.prefill_wait_min_load <= 0:
            return any(s.wants_token(max_context) for s in self.active)
        decoding = sum(s.wants_token(max_context) for s in self.active)
        if not decoding or step_cost is None:
            return False
        rows = min(self.config.max_batch_size, decoding + round(self._prompts_per_s(now)))
        return step_cost(rows) * orpheus.TOKENS_PER_SECOND >= self.config.prefill_wait_min_load

    def _prompts_per_s(self, now: float) -> float:
        """Prompts per second over the last second; a burst that began less than a second ago
        (from idle) counts at its rate so far, from its first 0.1 s on."""
        recent = [now - s.prefill_since for s in self.active if now - s.prefill_since < 1.0]
        return len(recent) / max(max(recent, default=0.0), _MIN_RATE_SPAN_S)

    def pick_decode(self) -> list[Session]:
        """Up to `max_batch_size` decoding sessions that want another id: TTFB priority first,
        then least recently run."""
        max_context = self.config.max_context_tokens
        ready = [s for s in self.active if s.wants_token(max_context)]
        limit = self.config.ttfb_priority_tokens

        def order(session: Session):
            priority = session.in_ttfb_priority and session.metrics.tokens < limit
            return (not priority, session.last_served, session.id)

        batch = sorted(ready, key=order)[: self.config.max_batch_size]
        for session in batch:
            session.last_served = self._serial
            self._serial += 1
        self.counters.total_batches += 1 if batch else 0
        return batch
