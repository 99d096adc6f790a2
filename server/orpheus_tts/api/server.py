"""One serving process: the gRPC server (with health and reflection), HTTP and WebSocket,
`/metrics`, and the engine, behind the access checks (API keys, per-key limits, origins) and
TLS of `security` (config.py).

Start-up is in two steps so that probes work from the first second: `start` binds the ports
and answers health checks with NOT_SERVING (and `/readyz` with 503), `load` loads and warms up
the model off the event loop and then switches health to SERVING. The engine bridge, the gRPC
server and the HTTP server (uvicorn) share the event loop that `start` runs on. `stop` drains:
not ready at once, in-flight streams of both doors get the grace period, then those still
running are ended in-band (`OpenStreams`), then the engine stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orpheus_tts.api.access import AccessControl
from orpheus_tts.api.grpc_access import AccessInterceptor
from orpheus_tts.api.http import HttpServer, HttpSettings, create_app
from orpheus_tts.api.loop_lag import watch_loop_lag
from orpheus_tts.api.open_streams import OpenStreams
from orpheus_tts.api.servicer import SERVICE_NAME, TextToSpeechServicer, add_to_server
from orpheus_tts.api.tls import GrpcTls, HttpTls
from orpheus_tts.config import ServerConfig
from orpheus_tts.engine import Engine, server_voices
from orpheus_tts.metrics import MetricsEndpoint, ServerMetrics

log = logging.getLogger("orpheus_tts.server")

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
DEFAULT_GRACE_S = 10.0  # in-flight streams get this long to finish on shutdown
_DRAIN_POLL_S = 0.05  # how often a draining server looks whether its streams have finished
END_S = 2.0  # after the grace, the streams left get this long to be ended in-band before the doors close


class OrpheusServer:
    def __init__(self, config: ServerConfig, host: str = "0.0.0.0", grpc_port: int = 50051,
                 metrics_port: int | None = 9090, http_port: int | None = None,
                 http_settings: HttpSettings | None = None, stream_idle_timeout_s: float = 30.0,
                 environ: Mapping[str, str] | None = None):
        """Port 0 picks a free port (see `grpc_port`/`http_port`/`metrics_port` after `start`).

        metrics_port None: no separate metrics port (HTTP still serves /metrics); http_port None: no HTTP.
        `environ` is where ORPHEUS_TTS_API_KEYS is read (the process' environment when None).
        """
        self.config = config
        self.host = host
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.http_port = http_port
        self.draining = False
        self.metrics = ServerMetrics()
        self.access = AccessControl(config.security, self.metrics, os.environ if environ is None else environ)
        self.streams = OpenStreams()
        self.voices = server_voices(config)  # known before the model loads: ListVoices answers meanwhile
        tls = config.security.tls_cert_file
        self._grpc_tls = GrpcTls(config.security) if tls else None
        self._http = HttpServer(create_app(self, http_settings), host, http_port, DEFAULT_GRACE_S,
                                HttpTls(config.security) if tls else None) if http_port is not None else None
        self.servicer = TextToSpeechServicer(self.metrics, config.default_voice, stream_idle_timeout_s, self.streams,
                                             self.voices)
        self.health = health.aio.HealthServicer()
        self.engine: Engine | None = None
        self._grpc: grpc.aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._loop_lag: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind and serve; health says NOT_SERVING until `load` has warmed up the model."""
        interceptors = [AccessInterceptor(self.access, self.metrics)] if self.access.enabled else []
        server = grpc.aio.server(interceptors=interceptors)
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{_grpc_host(self.host)}:{self.grpc_port}"
        self.grpc_port = server.add_secure_port(address, self._grpc_tls.credentials()) if self._grpc_tls else \
            server.add_insecure_port(address)
        await server.start()
        self._grpc = server
        self._loop_lag = asyncio.create_task(watch_loop_lag(self.metrics.loop_lag), name="orpheus-loop-lag")
        if self._http is not None:
            await self._http.start()
            self.http_port = self._http.port
        if self.metrics_port is not None:
            self._metrics_endpoint = self.metrics.serve(self.metrics_port, self.host)
            self.metrics_port = self._metrics_endpoint.port
        log.info("serving gRPC on %s:%d, HTTP on %s (not ready until warm; %s, %s), metrics on %s", self.host,
                 self.grpc_port, f"{self.host}:{self.http_port}" if self._http else "nothing",
                 "TLS" if self._grpc_tls else "plain text", "API keys" if self.access.enabled else "no API keys",
                 f"http://{self.host}:{self.metrics_port}/metrics" if self._metrics_endpoint else "nothing")

    async def load(self) -> None:
        """Load the model and codec, warm them up, then report SERVING."""
        engine = await asyncio.to_thread(Engine.from_config, self.config, self.metrics)
        self.engine = engine.start()
        await asyncio.to_thread(engine.warm_up)
        self.servicer.engine = engine
        self.metrics.ready.set(1)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        stats = engine.stats()
        log.info("ready: %d session slots, batches of up to %d", stats.max_concurrent,
                 self.config.scheduler.max_batch_size)

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """NOT_SERVING at once, let in-flight streams finish for `grace_s`, then stop everything.

        The listeners stay up while the streams drain: probes get their answer (`/readyz` 503,
        gRPC health NOT_SERVING, `/healthz` alive) and new requests a clear refusal (HTTP 503,
        UNAVAILABLE, WebSocket 1013) instead of a refused connection, and streams of every
        protocol, WebSocket included, finish. Streams still running at the end of the grace are
        ended by the server, each as its format allows (gRPC UNAVAILABLE, SSE `error` event,
        WebSocket 1012, a raw body cut), and logged as shutdowns with the audio they had. Only
        then do the doors close."""
        self.draining = self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        deadline = time.monotonic() + grace_s
        while self.engine is not None and self._in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        left = max(0.0, deadline - time.monotonic())
        if self.engine is not None and self._in_flight():
            log.warning("grace of %g s over with %d sessions still running: ending them", grace_s, self._in_flight())
            self.streams.end_all(f"the server is shutting down: this stream outlived the shutdown grace of "
                                 f"{grace_s:g} s; retry on another replica")
            ended = time.monotonic() + END_S
            while self._in_flight() and time.monotonic() < ended:
                await asyncio.sleep(_DRAIN_POLL_S)
            left = max(0.0, ended - time.monotonic())  # for the doors to send what ended them
        doors = []
        if self._grpc is not None:
            doors.append(self._grpc.stop(left))
            self._grpc = None
        if self._http is not None:
            doors.append(self._http.stop(left))
        await asyncio.gather(*doors)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
            self.engine = self.servicer.engine = None
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        if self._loop_lag is not None:
            self._loop_lag.cancel()
            self._loop_lag = None

    def _in_flight(self) -> int:
        stats = self.engine.stats()
        return stats.active_sessions + stats.pending_sessions

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):  # "" is the whole server, as Kubernetes' gRPC probe asks
            await self.health.set(service, status)


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def serve(config: ServerConfig, host: str, grpc_port: int, metrics_port: int | None,
                grace_s: float = DEFAULT_GRACE_S, http_port: int | None = 8000,
                http_settings: HttpSettings | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    idle_s = (http_settings or HttpSettings()).idle_timeout_s  # one idle timeout for streamed text
    server = OrpheusServer(config, host, grpc_port, metrics_port, http_port, http_settings, idle_s)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    try:
        loading = asyncio.create_task(server.load())
        stopped = asyncio.create_task(stopping.wait())
        await asyncio.wait((loading, stopped), return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # a model that cannot load ends the process
            await stopped
        else:
            loading.cancel()
        log.info("shutting down (grace %.0f s)", grace_s)
    finally:
        await server.stop(grace_s)
