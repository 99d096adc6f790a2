"""How many streams the engine can keep in real time, from what its steps cost.

Every stream needs its next id each real-time step (1/82 s). With N streams admitted and batches
of at most B rows, each stream is decoded every ceil(N / B) steps of t(min(N, B)) seconds, where
t is `StepCost`'s line fitted to the engine's whole iterations (the forward, the codec's decodes
launched beside it and the host's work), so the codec's cost is in it as it is on this GPU now.
Capacity is the largest N whose period fits the real-time step less a margin; admission
(`Scheduler.admit`) keeps the admitted streams at or under it, so those already admitted are never
slowed by later arrivals: a request beyond it waits in the queue and is then refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from orpheus_tts import orpheus
from orpheus_tts.config import SchedulerConfig
from orpheus_tts.engine.step_cost import StepCost

REALTIME_STEP_S = 1.0 / orpheus.TOKENS_PER_SECOND


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


def admission_capacity(sched: SchedulerConfig, step_cost: StepCost, slots: int) -> int:
    """The streams the engine admits now: its real-time capacity at the step cost fitted so far,
    or the slots with `scheduler.admission=slots`. Once per step; `Engine.stats` reports it."""
    if sched.admission == "slots":
        return slots
    return realtime_capacity(step_cost.predict, slots, sched.max_batch_size, sched.admission_margin)
