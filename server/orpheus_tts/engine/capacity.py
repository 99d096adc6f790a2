"""Capacity admission: a queued stream is admitted only if every admitted one stays in real time.

Every stream needs its next id each real-time step (1/82 s). With N streams in batches of at most
B rows, each is decoded every ceil(N / B) steps, and a step costs what `StepCost` fits to the
engine's whole iterations (the forward, the codec's decodes beside it, the host's work): a fixed
part, a part per row and a part per context token. Admitted streams get dearer as they speak,
since every id adds a token to the context that each later step reads. So admission weighs each
stream's whole remaining text, not its first chunk: it projects the admitted streams forward
(at each moment until the last ends, those still speaking and their contexts then) and admits
the next queued stream only if the token period stays within the real-time step less a margin
at every one of those moments, the newcomer included. Streams admitted earlier are never slowed
by later arrivals; the ones that do not fit wait in the queue and are then refused.

Admission decides who holds a slot; a stream's first audio also needs its prompt prefilled,
and a prefill holds up every decoding stream for as long as it runs (a full 2,048-token one
several real-time steps). So the prefills of a step are bounded too (`prefill_tokens`): by the
step's real-time slack, or by the thinnest lead a playing stream holds (audio it has beyond what
has played, less the time its next frame takes: `scheduler.prefill_guard_frames`), whichever
allows more. A burst of arrivals then has its first audio a little later instead of stalling the
streams already speaking.

The projection takes each piece's budget (`orpheus.audio_token_budget`) as what it will speak:
a real model usually ends a piece sooner, so admission errs on the side of the streams admitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from orpheus_tts import orpheus
from orpheus_tts.config import SchedulerConfig
from orpheus_tts.engine.session import Session, SessionState
from orpheus_tts.engine.step_cost import StepCost

REALTIME_STEP_S = 1.0 / orpheus.TOKENS_PER_SECOND
_MOMENTS = 32  # future moments checked per projection: now, and spread over the streams' ends
_TYPICAL_ALPHA = 0.05  # how fast the capacity figure follows the streams admitted lately


def token_period_s(streams: int, max_batch: int, step_s: Callable[[int], float]) -> float:
    """Seconds between two ids of one stream when `streams` share batches of `max_batch`."""
    return math.ceil(streams / max_batch) * step_s(min(streams, max_batch))


def realtime_capacity(step_s: Callable[[int], float], slots: int, max_batch: int, margin: float) -> int:
    """The most streams (at least 1, at most `slots`) whose token period stays within the
    real-time step less `margin`; `slots` while the step cost is still unknown (0)."""
    budget = REALTIME_STEP_S * (1.0 - margin)
    if step_s(1) <= 0.0:
        return slots
    low, high = 1, slots  # the period only grows with the streams: bisect for the last that fits
    if token_period_s(high, max_batch, step_s) <= budget:
        return high
    while low < high:
        middle = (low + high + 1) // 2
        if token_period_s(middle, max_batch, step_s) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def projected_period_s(loads: np.ndarray, max_batch: int, coefficients: tuple[float, float, float]) -> float:
    """The longest token period ahead for streams with these `loads` ([n, 3]: context tokens now,
    ids still to generate, largest context), each gaining one id a period until its ids run out.
    The load only drops when a stream ends, so between ends it peaks just before one: those
    moments are checked (at most `_MOMENTS` of them, spread over the ends, and now)."""
    if not len(loads):
        return 0.0
    context, left, peak = loads[:, 0], loads[:, 1], loads[:, 2]
    ends = np.unique(left[left > 0]) - 1
    if len(ends) > _MOMENTS:
        ends = ends[np.linspace(0, len(ends) - 1, _MOMENTS).astype(np.int64)]
    moments = np.concatenate(([0.0], ends))
    alive = left[:, None] > moments[None, :]
    tokens = np.where(alive, np.minimum(context[:, None] + moments[None, :], peak[:, None]), 0.0).sum(axis=0)
    rows = alive.sum(axis=0)
    batch = np.minimum(rows, max_batch)
    fixed, per_row, per_token = coefficients
    step = fixed + per_row * batch + per_token * tokens * batch / np.maximum(rows, 1)
    return float((np.ceil(rows / max_batch) * step).max())


class Admission:
    """Decides, once per step, which queued streams the engine admits (`fits`), and the capacity
    figure it exports (`capacity`: streams of the kind admitted lately that fit at once)."""

    def __init__(self, sched: SchedulerConfig, cost: StepCost, slots: int, prefill_cost: StepCost | None = None):
        self.sched, self.cost, self.slots = sched, cost, slots
        self.prefill_cost = prefill_cost or StepCost()  # a prefill's seconds against its prompt tokens
        self._loads = np.zeros((0, 3))  # the admitted streams' (context, ids left, largest context)
        self._coefficients = (0.0, 0.0, 0.0)
        self._period = 0.0  # the admitted streams' projected token period, or a bound on it
        self._typical_context = 0.0  # mean context over a stream's life, of those admitted lately

    def begin(self, active: list[Session]) -> None:
        """Take the admitted streams' loads as they stand now, before this step's admissions."""
        loads = [load for load in (s.projected_tokens() for s in active) if load is not None]
        self._loads = np.array(loads, dtype=np.float64).reshape(-1, 3)
        self._coefficients = self.cost.coefficients()
        self._period = projected_period_s(self._loads, self.sched.max_batch_size, self._coefficients)

    def fits(self, session: Session) -> bool:
        """Whether admitting `session` keeps every admitted stream's projected token period within
        the budget; if so it is counted among them for the rest of this step. The first stream is
        always admitted, and so is every one while the step cost is unknown or with `admission: slots`."""
        load = session.projected_tokens() or self._typical_load()
        loads = np.concatenate((self._loads, np.array([load], dtype=np.float64)))
        if self.sched.admission != "slots" and sum(self._coefficients) > 0.0:
            # A stream adds at most a row and its largest context to any moment's step: while that
            # bound fits, a burst is admitted without projecting the whole set again for each one.
            _, per_row, per_token = self._coefficients
            period = self._period + per_row + per_token * load[2]
            budget = REALTIME_STEP_S * (1.0 - self.sched.admission_margin)
            if not len(self._loads) or period > budget or len(loads) > self.sched.max_batch_size:
                period = projected_period_s(loads, self.sched.max_batch_size, self._coefficients)
                if period > budget and len(self._loads):  # the first stream goes whatever it costs
                    return False
            self._period = period
        self._loads = loads
        self._learn(load)
        return True

    def capacity(self) -> int:
        """Streams like those admitted lately (their mean context over their life) that the engine
        keeps in real time at once; the slots with `admission: slots`. Once per step, for the
        metrics and the saturation figure."""
        if self.sched.admission == "slots":
            return self.slots
        context = self._typical_context or self.cost.tokens_per_row()
        fixed, per_row, per_token = self.cost.coefficients()  # once, not at every step of the bisection
        per_stream = per_row + per_token * context
        return realtime_capacity(lambda rows: fixed + per_stream * rows, self.slots, self.sched.max_batch_size,
                                 self.sched.admission_margin)

    def figures(self) -> dict:
        """What the metrics show of admission, once per step: the `capacity` figure and what it is
        made of, the step-cost fit (`step_cost`: fixed, per row, per context token, seconds) and the
        context it takes a stream to hold on average over its life (`stream_context`, tokens)."""
        context = self._typical_context or self.cost.tokens_per_row()
        return dict(capacity=self.capacity(), step_cost=self.cost.coefficients(), stream_context=context)

    def prefill_tokens(self, active: list[Session], now: float) -> int | None:
        """The most prompt tokens this step's prefill may take without a playing stream stalling:
        what fits in the larger of the decode step's real-time slack and the thinnest lead among
        the streams that play (each less the time its next `prefill_guard_frames` frames take at
        this step). None (no bound beyond `max_prefill_tokens`) while nothing plays, with
        `admission: slots` or a guard of 0, or before a prefill was timed. The scheduler still
        takes one prompt."""
        fixed, per_token, _ = self.prefill_cost.coefficients()  # its "rows" are the prompt tokens (runner.py)
        guard_frames = self.sched.prefill_guard_frames
        if self.sched.admission == "slots" or guard_frames <= 0 or per_token <= 0.0:
            return None
        playing = [s for s in active if s.state is SessionState.DECODING and s.playback_started is not None]
        if not playing:
            return None
        step = self.cost.predict(min(len(playing), self.sched.max_batch_size))
        slack = REALTIME_STEP_S * (1.0 - self.sched.admission_margin) - step
        lead = min(s.playback_lead_s(now) for s in playing) - guard_frames * orpheus.TOKENS_PER_FRAME * step
        return max(int((max(slack, lead) - fixed) / per_token), 0)

    def _typical_load(self) -> tuple[int, int, int]:
        """A stream with no text yet (its text streams in): as long as the average one admitted lately."""
        context = int(self._typical_context)
        return 0, 2 * context, 2 * context

    def _learn(self, load: tuple[int, int, int]) -> None:
        context, left, peak = load
        life_mean = (context + min(context + left, peak)) / 2
        alpha = _TYPICAL_ALPHA if self._typical_context else 1.0
        self._typical_context += alpha * (life_mean - self._typical_context)
