"""One logfmt line per finished request, in one format for every door (gRPC, HTTP, WebSocket;
each door adds its own fields, such as HTTP's format).

Outcomes use the gRPC status names (ok, invalid_argument, resource_exhausted...), so one
dashboard and one log query cover all doors.
"""

from __future__ import annotations

import logging
import time
import uuid

from orpheus_tts.api.access import current_key
from orpheus_tts.engine import SessionMetrics
from orpheus_tts.metrics import ServerMetrics

log = logging.getLogger("orpheus_tts.api")

MAX_REQUEST_ID_CHARS = 64


def request_id(sent: str | None) -> str:
    """The client's own request id when it is printable (cut to 64 characters), else a new one."""
    return sent[:MAX_REQUEST_ID_CHARS] if sent and sent.isprintable() else uuid.uuid4().hex[:16]


class RequestRecord:
    """One request, whatever its door: its id, what it asked for, its session's metrics and when
    its first audio went out; counted in the metrics and logged as one line, once (`done`)."""

    def __init__(self, method: str, metrics: ServerMetrics, sent_id: str | None = None,
                 log_level: int = logging.INFO):
        self.method = method
        self.metrics = metrics
        self.log_level = log_level
        self.id = request_id(sent_id)
        self.voice = "-"
        self.chars = 0
        self.format = "-"
        self.session: SessionMetrics | None = None
        self.started = time.monotonic()
        self.first_sent: float | None = None  # when the first audio went to the transport
        self.outcome: str | None = None

    def audio_sent(self) -> None:
        """Note the first audio handed to the transport (later calls change nothing)."""
        self.first_sent = self.first_sent or time.monotonic()

    def done(self, outcome: str, detail: str | None = None) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.metrics.request_done(self.method, outcome)
        fields = {"id": self.id, "method": self.method, "key": current_key.get(), "voice": self.voice,
                  "format": self.format, "chars": self.chars, "outcome": outcome}
        pieces = self.session.pieces if self.session else 0
        log_request(self.log_level, fields, self.session, self.started, detail, self.first_sent, pieces=pieces)


def log_request(level: int, fields: dict, metrics: SessionMetrics | None, started: float,
                detail: str | None = None, first_sent: float | None = None, **after_metrics) -> None:
    """Write `request k=v ...`: the door's fields, the session's metrics, `after_metrics`, the
    elapsed time and the detail of a failure.

    Two first-audio times: `ttfb_ms`, the engine's (from the session's start to its first audio),
    and `sent_ms`, the door's (from the request reaching its handler to the first audio handed to
    the transport, `first_sent`). What lies between them is the door's own share (parsing,
    validation, the hand-off from the engine thread); what a client sees beyond `sent_ms` is the
    network, the connection and the client."""
    m = metrics or SessionMetrics()
    line = {
        **fields,
        **({"adapter": m.adapter} if m.adapter else {}),
        "ttfb_ms": "-" if m.ttfb_s is None else f"{m.ttfb_s * 1000:.0f}",
        "sent_ms": "-" if first_sent is None else f"{(first_sent - started) * 1000:.0f}",
        "audio_s": f"{m.audio_s:.2f}",
        "rtf": "-" if m.real_time_factor is None else f"{m.real_time_factor:.2f}",
        "tokens": m.tokens,
        **after_metrics,
        "elapsed_s": f"{time.monotonic() - started:.3f}",
    }
    if detail:
        line["detail"] = detail
    log.log(level, "request " + " ".join(f"{k}={logfmt(v)}" for k, v in line.items()))


def logfmt(value) -> str:
    """A value as logfmt writes it: quoted when it is empty or holds a space, quote or '='."""
    text = str(value).replace("\n", " ")
    return '"' + text.replace('"', "'") + '"' if not text or " " in text or '"' in text or "=" in text else text
