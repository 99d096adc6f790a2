"""uvicorn on the caller's event loop: bind, serve as a task, drain on stop.

uvicorn's own signal handling is switched off: the process' SIGINT/SIGTERM belong to
`orpheus_tts.api.server.serve`, which stops gRPC and HTTP together. With TLS, uvicorn serves the
live context of `HttpTls`, whose files are looked at every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from orpheus_tts.api.open_streams import ShutdownCut
from orpheus_tts.api.tls import RELOAD_POLL_S, HttpTls

WS_MAX_MESSAGE_BYTES = 1024 * 1024  # a bigger client message closes the socket with 1009
_INCOMPLETE = "ASGI callable returned without completing response."  # what uvicorn logs for a cut body
_cut_by_shutdown: contextvars.ContextVar[bool] = contextvars.ContextVar("orpheus_tts_cut", default=False)


class QuietShutdownCuts:
    """ASGI middleware: a body ended by `ShutdownCut` returns without its last chunk (uvicorn then
    closes the connection, so the client sees the body cut) and without uvicorn's error log; the
    door has logged the request as what it was."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if not _is_shutdown_cut(exc):
                raise
            _cut_by_shutdown.set(True)  # read by the filter below, in this same request task


def _is_shutdown_cut(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)  # an exception group from the response's task group
    return isinstance(exc, ShutdownCut) or bool(inner) and all(_is_shutdown_cut(e) for e in inner)


def _not_a_shutdown_cut(record: logging.LogRecord) -> bool:
    return not (record.msg == _INCOMPLETE and _cut_by_shutdown.get())


logging.getLogger("uvicorn.error").addFilter(_not_a_shutdown_cut)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float, tls: HttpTls | None = None):
        self.app = app
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self.tls = tls
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind now (port 0 picks a free one, see `port`) and serve on the running loop."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they
        # are TCP, and accepted ones inherit this. Without it the first audio chunk waited for the
        # ACK of the headers, which the client delays by up to 40 ms (Nagle's algorithm).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        # No permessage-deflate on WebSockets (uvicorn negotiates it by default): PCM barely compresses
        # (8,192 bytes to about 8,020) and deflating one such chunk takes ~0.4 ms of the event loop,
        # so 200 streams' chunks alone filled it (measured on the H200: half the streams stalled).
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                ws_max_size=WS_MAX_MESSAGE_BYTES, ws_per_message_deflate=False,
                                timeout_graceful_shutdown=self.grace_s)
        if self.tls is not None:
            config.load()  # then our live context replaces uvicorn's (which has none without its ssl_ flags)
            config.ssl = self.tls.context
            self._watch = asyncio.create_task(self._watch_certificates(), name="orpheus-http-tls")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="orpheus-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
            await asyncio.sleep(0.01)

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_S)
            self.tls.reload_if_changed()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, give in-flight responses `grace_s`, then close what is left."""
        if self._server is None:
            return
        if grace_s is not None:
            self._server.config.timeout_graceful_shutdown = grace_s
        self._server.should_exit = True
        await self._task
        if self._watch is not None:
            self._watch.cancel()
        self._server = self._task = self._watch = None
