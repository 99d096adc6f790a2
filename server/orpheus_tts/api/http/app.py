"""The HTTP door: FastAPI routes over the same engine and metrics as gRPC.

    POST /v1/audio/speech   OpenAI-compatible speech (see speech.py)
    WS   /v1/audio/stream   JSON request in, binary audio out, then {"done": true, "metrics"}
    GET  /v1/audio/voices   voices, the default voice, emotion tags
    GET  /v1/stats          what gRPC GetStats returns, in the seed's layout
    GET  /healthz           the process is alive
    GET  /readyz            model loaded and warm, not draining (503 otherwise)
    GET  /metrics           Prometheus, the same registry as the metrics port

In front of every route, `AccessMiddleware` checks the browser origin and, with keys on, the
API key and its limits (http/access.py); with `security.allowed_origins` set, Starlette's CORS
middleware answers those origins' preflights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from orpheus_tts import orpheus
from orpheus_tts.api.access import AccessControl
from orpheus_tts.api.http import speech
from orpheus_tts.api.http.access import AccessMiddleware
from orpheus_tts.api.http.errors import ApiError, internal, unavailable
from orpheus_tts.api.request_log import RequestRecord
from orpheus_tts.api.http.serving import QuietShutdownCuts
from orpheus_tts.api.http.websocket import serve_stream
from orpheus_tts.api.open_streams import OpenStreams
from orpheus_tts.config import ServerConfig
from orpheus_tts.engine import Engine, SessionFailure
from orpheus_tts.metrics import ServerMetrics
from orpheus_tts.requests import AUDIO_FORMATS
from orpheus_tts.voices import Voice


@dataclass
class HttpSettings:
    idle_timeout_s: float = 30.0  # a WebSocket client silent this long (before its text ends) is closed
    body_bytes_per_char: int = 16  # the body limit is this times the profile's max_text_chars...
    body_slack_bytes: int = 64 * 1024  # ...plus this, room for JSON escapes and the other fields


class HttpHost(Protocol):
    """What the routes need from the server around them (OrpheusServer)."""

    config: ServerConfig
    engine: Engine | None
    metrics: ServerMetrics
    draining: bool
    access: AccessControl
    streams: OpenStreams
    voices: dict[str, Voice]  # by name: `server_voices`, which the engine validates against


def create_app(host: HttpHost, settings: HttpSettings | None = None) -> FastAPI:
    settings = settings or HttpSettings()
    app = FastAPI(title="orpheus-tts", docs_url=None, redoc_url=None, openapi_url=None)
    origins = host.config.security.allowed_origins
    app.add_middleware(QuietShutdownCuts)
    app.add_middleware(AccessMiddleware, access=host.access, allowed_origins=origins)
    if origins:  # outside the access check: a preflight carries no key
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id", "retry-after"])

    def ready_engine() -> Engine:
        if host.draining:
            raise unavailable("the server is shutting down; retry on another replica")
        if host.engine is None or not host.engine.ready:
            raise unavailable("the model is still loading; retry shortly")
        return host.engine

    def max_body_bytes(engine: Engine) -> int:
        return engine.config.active_profile.max_text_chars * settings.body_bytes_per_char + settings.body_slack_bytes

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code="not_found"
                         if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.post("/v1/audio/speech")
    async def create_speech(request: Request) -> Response:
        record = RequestRecord("http_speech", host.metrics, request.headers.get("x-request-id"))
        try:
            engine = ready_engine()
            speech.check_content_type(request)
            raw = await speech.read_body(request, max_body_bytes(engine))
            speech_request, options = speech.parse_speech(engine, raw)
            record.voice, record.chars, record.format = speech_request.voice, len(speech_request.text), \
                speech_request.format
            stream = host.streams.open(engine, speech_request)  # QueueFullError: nothing was admitted
            # The status goes out with the first audio, so a request refused while queued is a 429.
            try:
                if not await speech.started_unless_gone(stream, request):
                    stream.cancel()  # the client left while it waited: its place in the queue goes too
                    record.done("cancelled", "the client went away before the first audio")
                    return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
            except BaseException:  # refused, or cancelled: end the session
                stream.cancel()
                raise
        except Exception as exc:
            error = internal(f"{exc} (request {record.id})") if isinstance(exc, SessionFailure) else \
                ApiError.from_exception(exc)
            record.done(error.outcome, error.message)
            raise error from None
        return speech.speech_response(stream, speech_request, options, record, host.streams)

    @app.websocket("/v1/audio/stream")
    async def stream_speech(ws: WebSocket) -> None:
        await serve_stream(ws, ready_engine, host.metrics, settings.idle_timeout_s, host.streams)

    @app.get("/v1/audio/voices")
    async def voices() -> dict:
        return {"voices": [{"name": v.name, **({"language": v.language} if v.language else {}),
                            **({"adapter": v.adapter} if v.adapter else {})} for v in host.voices.values()],
                "default_voice": host.config.default_voice,
                "emotion_tags": list(orpheus.EMOTION_TAGS), "response_formats": list(AUDIO_FORMATS)}

    @app.get("/v1/stats")
    async def stats() -> dict:
        engine = host.engine
        if engine is None:
            return {"ready": False}
        s = engine.stats()
        return {
            "ready": engine.ready and not host.draining,
            "scheduler": {"total_sessions": s.total_sessions, "completed_sessions": s.completed_sessions,
                          "rejected_sessions": s.rejected_sessions, "active_sessions": s.active_sessions,
                          "pending_sessions": s.pending_sessions, "max_concurrent": s.max_concurrent},
            "kv_cache": {"used_slots": s.used_slots, "free_slots": s.free_slots},
            "total_tokens": s.total_tokens, "total_batches": s.total_batches,
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            ready_engine()
        except ApiError as exc:
            return JSONResponse({"ready": False, "reason": exc.message}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(host.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
