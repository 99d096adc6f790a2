"""The HTTP and WebSocket door's access check: one ASGI middleware in front of every route.

In order: the `Origin` (a browser page's; refused with 403 unless it is the server's own or in
`security.allowed_origins`), then, while keys are on and the path is not an open probe, the key
(`Authorization: Bearer KEY`) and its limits. HTTP refusals are OpenAI-shaped: 401 with
`WWW-Authenticate: Bearer`, or 429 with `Retry-After`. A WebSocket is accepted, told the error in
one JSON message and closed, 1008 for a key, 1013 for a limit, as its other errors are.

Browsers cannot set headers on a WebSocket, so a page sends its key as a subprotocol: it offers
`orpheus-tts.v1` and `bearer.KEY` (`new WebSocket(url, ["orpheus-tts.v1", "bearer." + key])`) and
the server accepts `orpheus-tts.v1`. That, not a `?api_key=` query parameter, because a URL ends
up in proxies' access logs and a header does not.
"""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from orpheus_tts.api.access import AccessControl, bearer_token, current_key
from orpheus_tts.api.http.errors import ApiError
from orpheus_tts.api.request_log import RequestRecord

log = logging.getLogger("orpheus_tts.api")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SPEECH_METHODS = {"/v1/audio/speech": "http_speech", "/v1/audio/stream": "websocket_stream"}  # speech streams
WS_SUBPROTOCOL = "orpheus-tts.v1"
WS_BEARER_PREFIX = "bearer."
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


def websocket_key(scope: Scope) -> str | None:
    """The key a browser offered as the subprotocol `bearer.KEY`, if any."""
    for protocol in scope.get("subprotocols") or ():
        if protocol.startswith(WS_BEARER_PREFIX):
            return protocol[len(WS_BEARER_PREFIX):] or None
    return None


class AccessMiddleware:
    def __init__(self, app: ASGIApp, access: AccessControl, allowed_origins: list[str]):
        self.app = app
        self.access = access
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, headers.get("host", "")):
            error = ApiError(403, f"origin {origin} may not call this server (security.allowed_origins)",
                             code="origin_not_allowed", outcome="permission_denied")
            return await self._refuse(scope, receive, send, headers, error)
        if self.access.is_open(probe=scope["path"] in PROBE_PATHS):
            return await self.app(scope, receive, send)
        websocket = scope["type"] == "websocket"
        token = bearer_token(headers.get("authorization")) or (websocket_key(scope) if websocket else None)
        try:
            permit = self.access.admit(token, "websocket" if websocket else "http", scope["path"] in SPEECH_METHODS)
        except Exception as exc:  # UnauthenticatedError or a BusyError
            if getattr(exc, "key", None):  # a known key over its limit: its name goes in the log line
                current_key.set(exc.key)
            return await self._refuse(scope, receive, send, headers, ApiError.from_exception(exc))
        with permit:
            await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """The server's own origin (the page came from here), or one the settings allow."""
        own = origin.partition("://")[2].lower() == host.lower()
        return own or "*" in self.allowed_origins or origin in self.allowed_origins

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, headers: Headers, error: ApiError) -> None:
        method = SPEECH_METHODS.get(scope["path"])
        if method is not None:  # the speech doors count and log every request; the others none
            RequestRecord(method, self.access.metrics, headers.get("x-request-id")).done(error.outcome,
                                                                                         error.message)
        if scope["type"] == "http":
            body = json.dumps(error.body()).encode()
            await send({"type": "http.response.start", "status": error.status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in error.headers.items())]})
            await send({"type": "http.response.body", "body": body})
            return
        if error.status == 403:  # a page from elsewhere: no WebSocket at all (uvicorn answers 403)
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or ()
        await send({"type": "websocket.accept", "subprotocol": WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None})
        await send({"type": "websocket.send", "text": json.dumps(error.body())})
        code = CLOSE_TRY_LATER if error.status == 429 else CLOSE_POLICY
        await send({"type": "websocket.close", "code": code, "reason": error.message.encode()[:120].decode(errors="ignore")})
