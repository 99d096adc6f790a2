"""Errors in OpenAI's shape, and the metrics a finished session's end message carries.

Every failure the HTTP and WebSocket doors report is an `ApiError`; its body is OpenAI's
`{"error": {"message", "type", "param", "code"}}`, so the official SDKs raise their usual
exceptions (`BadRequestError`, `RateLimitError`...) with our message in them. Outcomes use
the gRPC names (ok, invalid_argument, resource_exhausted...) so one dashboard covers all doors.
"""

from __future__ import annotations

import logging

from orpheus_tts.engine import SessionMetrics
from orpheus_tts.errors import BusyError, RequestError, UnauthenticatedError

log = logging.getLogger("orpheus_tts.api")

# Our request fields under the names the HTTP API gives them.
API_FIELD_NAMES = {"format": "response_format"}


class ApiError(Exception):
    """A request ends with `status` and an OpenAI error body; `outcome` is what metrics count."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 outcome: str = "invalid_argument", headers: dict[str, str] | None = None):
        message, param = _printable(message), param if param is None else _printable(param)
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code
        self.outcome = outcome
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_exception(cls, exc: BaseException, text_field: str = "input") -> "ApiError":
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, RequestError):
            param = text_field if exc.field == "text" else API_FIELD_NAMES.get(exc.field, exc.field)
            return cls(400, f"{param}: {exc.message}", param=param, code=exc.code)
        if isinstance(exc, UnauthenticatedError):
            return cls(401, str(exc), code="invalid_api_key", outcome="unauthenticated",
                       headers={"WWW-Authenticate": "Bearer"})
        if isinstance(exc, BusyError):
            return cls(429, str(exc), type="rate_limit_error", code=exc.code, outcome="resource_exhausted",
                       headers={"Retry-After": str(exc.retry_after_s)})
        log.error("request failed", exc_info=exc)
        return internal(f"internal error: {type(exc).__name__}")


def _printable(text: str) -> str:
    """Text that can be sent back as UTF-8 JSON: a lone surrogate the client sent comes back
    escaped (`\\ud800`), not as a failure to encode the error itself."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="unavailable", outcome="unavailable",
                    headers={"Retry-After": "5"})


def internal(message: str, outcome: str = "internal") -> ApiError:
    return ApiError(500, message, type="server_error", code=outcome, outcome=outcome)


def metrics_json(request_id: str, m: SessionMetrics) -> dict:
    """A finished session's metrics as the WebSocket `done` message and the SSE end event carry them."""
    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000.0, 2)

    return {"request_id": request_id, "ttfb_ms": ms(m.ttfb_s), "queue_ms": ms(m.queue_s),
            "elapsed_ms": ms(m.elapsed_s), "audio_ms": ms(m.audio_s),
            "real_time_factor": None if m.real_time_factor is None else round(m.real_time_factor, 3),
            "tokens": m.tokens, "frames": m.frames, "text_pieces": m.pieces}
