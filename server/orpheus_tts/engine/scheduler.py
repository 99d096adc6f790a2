"""Who runs this step: the session pool, the admission queue, and batch selection.

The pool holds at most `max_concurrent_sessions` sessions, each with a KV slot. Behind it a
bounded queue (`max_pending_sessions`); a request that finds it full is refused at once
(`QueueFullError`), never parked without bound. Each step decodes up to `max_batch_size`
sessions: sessions still waiting for their first audio go first (at most
`ttfb_priority_tokens` tokens each), the rest in least-recently-run order, so that with more
sessions than batch places each is run every few steps and none starves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from orpheus_tts import orpheus
from orpheus_tts.config import SchedulerConfig
from orpheus_tts.engine.kv_cache import SlotAllocator
from orpheus_tts.engine.session import Session, SessionState


_MIN_RATE_SPAN_S = 0.1  # the shortest span an arrival rate is measured over


class QueueFullError(RuntimeError):
    """The admission queue is full; the caller should retry later."""

    def __init__(self, pending: int, retry_after_s: float):
        super().__init__(f"server busy: {pending} requests already queued; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


@dataclass
class SchedulerCounters:
    total_sessions: int = 0  # ever admitted to the queue
    completed_sessions: int = 0
    rejected_sessions: int = 0  # refused because the queue was full
    total_tokens: int = 0
    total_batches: int = 0  # decode steps run
    total_prefills: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: SlotAllocator):
        self.config = config
        self.allocator = allocator
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
                raise QueueFullError(len(self.pending), retry_after_s=1.0)
            self.pending.append(session)
            self.counters.total_sessions += 1

    @property
    def pending_count(self) -> int:
        return len(self.pending)

    # -- engine thread -----------------------------------------------------------------
    def admit(self) -> list[Session]:
        """Give queued sessions free slots, oldest first; returns the newly admitted ones."""
        admitted = []
        with self._lock:
            while self.pending and self.allocator.free_count:
                session = self.pending.popleft()
                if session.cancelled:
                    admitted.append(session)  # the engine ends it without a slot
                    continue
                session.slot = self.allocator.allocate()
                session.state = SessionState.WAITING_TEXT
                self.active.append(session)
                admitted.append(session)
        return admitted

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

    def pick_prefill(self, max_sessions: int | None = None,
                     step_cost: Callable[[int], float] | None = None) -> list[Session]:
        """Sessions whose prompt to prefill this step, oldest first, within the prompt-token budget
        (and at most `max_sessions`: the largest prefill the runner has a CUDA graph for).

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
        for session in waiting:
            need = len(session.piece.prompt)
            if chosen and tokens + need > self.config.max_prefill_tokens:
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
