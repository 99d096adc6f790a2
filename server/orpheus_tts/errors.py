"""The errors a caller can cause, in one place: every API door maps these and only these.

`RequestError` is bad input (INVALID_ARGUMENT / HTTP 400 / a WebSocket close code); its `field`
names what to fix. A `BusyError` is a refusal for now (RESOURCE_EXHAUSTED / HTTP 429 with
Retry-After / WebSocket 1013): `QueueFullError` at once, `AtCapacityError` after waiting in the
queue, `KeyRateError` and `KeySessionsError` for one API key over its own limits.
`UnauthenticatedError` is a missing or unknown API key (UNAUTHENTICATED / HTTP 401 / WebSocket
1008). Anything else reaching a door is our bug, reported as internal.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A request is invalid; `field` names the offending field, `code` the kind of fault (OpenAI's
    error code on HTTP; `invalid_unicode` closes a WebSocket with 1007, invalid payload data)."""

    def __init__(self, field: str, message: str, code: str = "invalid_value"):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


class BusyError(RuntimeError):
    """The server cannot take the request now; retry after `retry_after_s` whole seconds. `code`
    names why (OpenAI's error code on HTTP, the refusal metric's reason)."""

    code = "busy"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(BusyError):
    """The admission queue is full: refused on arrival."""

    code = "queue_full"

    def __init__(self, waiting: int, limit: int, retry_after_s: int):
        super().__init__(f"server busy: the admission queue is full ({waiting} requests wait for a slot, at most "
                         f"{limit} may); retry after {retry_after_s} s", retry_after_s)


class AtCapacityError(BusyError):
    """The request waited the queue's bound without a slot or real-time capacity freeing up; no
    audio was made for it."""

    code = "at_capacity"


class KeyRateError(BusyError):
    """One API key made more requests than `security.requests_per_s_per_key` allows."""

    code = "key_rate"

    def __init__(self, key: str, rate: float, retry_after_s: int):
        super().__init__(f"rate limited: key {key} may make {rate:g} requests/s; retry after {retry_after_s} s",
                         retry_after_s)
        self.key = key


class KeySessionsError(BusyError):
    """One API key already has `security.max_sessions_per_key` speech streams open."""

    code = "key_sessions"

    def __init__(self, key: str, limit: int, retry_after_s: int = 1):
        super().__init__(f"rate limited: key {key} already has {limit} speech streams open, its limit; retry after "
                         f"{retry_after_s} s", retry_after_s)
        self.key = key


class UnauthenticatedError(PermissionError):
    """No API key, or none this server knows. The message never says which keys exist."""

    def __init__(self, message: str = "a valid API key is required: send Authorization: Bearer <key>"):
        super().__init__(message)
