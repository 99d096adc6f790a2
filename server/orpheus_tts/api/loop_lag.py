"""How late the serving event loop runs what is ready: one number for "is the loop the bottleneck".

gRPC, HTTP, WebSocket and every stream's chunks (handed over from the engine thread) share one
asyncio loop. A timer that fires late by L seconds means every callback ready at that moment
waited about L too: a first chunk, a response's next bytes, a new connection's accept. Sampled
every `interval_s` into `orpheus_tts_event_loop_lag_seconds`.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

INTERVAL_S = 0.1


async def watch_loop_lag(histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
    """Observe, until cancelled, how much later than asked each `interval_s` sleep wakes up."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        histogram.observe(max(0.0, loop.time() - asked))
