"""uvicorn on the caller's event loop: bind, serve as a task, drain on stop.

uvicorn's own signal handling is switched off: the process' SIGINT/SIGTERM belong to
`orpheus_tts.api.server.serve`, which stops gRPC and HTTP together.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from fastapi import FastAPI

WS_MAX_MESSAGE_BYTES = 1024 * 1024  # a bigger client message closes the socket with 1009


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float):
        self.app = app
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind now (port 0 picks a free one, see `port`) and serve on the running loop."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                ws_max_size=WS_MAX_MESSAGE_BYTES, timeout_graceful_shutdown=self.grace_s)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="orpheus-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, give in-flight responses `grace_s`, then close what is left."""
        if self._server is None:
            return
        if grace_s is not None:
            self._server.config.timeout_graceful_shutdown = grace_s
        self._server.should_exit = True
        await self._task
        self._server = self._task = None
