"""The errors a caller can cause, in one place: every API door maps these and only these.

`RequestError` is bad input (INVALID_ARGUMENT / HTTP 400 / a WebSocket close code); its `field`
names what to fix. `QueueFullError` is a refusal for now (RESOURCE_EXHAUSTED / HTTP 429 with
Retry-After). Anything else reaching a door is our bug, reported as internal.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A request is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class QueueFullError(RuntimeError):
    """The admission queue is full; the caller should retry after `retry_after_s` seconds."""

    def __init__(self, pending: int, retry_after_s: float):
        super().__init__(f"server busy: {pending} requests already queued; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s
