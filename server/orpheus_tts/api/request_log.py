"""One logfmt line per finished request, in one format for every door (gRPC, HTTP, WebSocket;
each door adds its own fields, such as HTTP's format).

Outcomes use the gRPC status names (ok, invalid_argument, resource_exhausted...), so one
dashboard and one log query cover all doors.
"""

from __future__ import annotations

import logging
import time
import uuid

from orpheus_tts.engine import SessionMetrics

log = logging.getLogger("orpheus_tts.api")

MAX_REQUEST_ID_CHARS = 64


def request_id(sent: str | None) -> str:
    """The client's own request id when it is printable (cut to 64 characters), else a new one."""
    return sent[:MAX_REQUEST_ID_CHARS] if sent and sent.isprintable() else uuid.uuid4().hex[:16]


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
