"""`WS /v1/audio/stream`: a JSON request in, binary audio frames out, then `{"done": true, "metrics"}`.

The first message is a JSON object with the fields of `POST /v1/audio/speech` (`text` or
`input`, `voice`, `response_format` (default pcm), sampling extensions). With
`"streaming_text": true` the text arrives in later messages, `{"text": "..."}`, and ends with
`{"end": true}` (or `"end": true` on the last piece); speech starts at the first whole sentence.

Errors are one JSON message, `{"error": {...}}` in OpenAI's shape, then a close code:
1003 a binary message from the client, 1007 a message that is not a JSON object,
1008 an invalid request or a client silent for `idle_timeout_s`, 1011 the engine failed,
1012 the server is shutting down and the stream outlived its grace, 1013 busy or not ready (try
again later). A good stream closes with 1000.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from orpheus_tts.api.http.access import WS_SUBPROTOCOL
from orpheus_tts.api.http.errors import ApiError, metrics_json
from orpheus_tts.api.request_log import RequestRecord
from orpheus_tts.api.open_streams import OpenStreams
from orpheus_tts.api.http.speech import (SPEECH_FIELDS, SessionFailed, check_fields, encoded_audio,
                                         parse_json_object, speech_request)
from orpheus_tts.engine import Engine, SpeechStream
from orpheus_tts.errors import RequestError

FIRST_FIELDS = SPEECH_FIELDS - {"stream_format"} | {"streaming_text", "end"}
PIECE_FIELDS = frozenset({"text", "input", "end"})

CLOSE_OK = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_LATER = 1013


class ClientMessageError(ApiError):
    """The client sent something unusable; `close_code` says how the socket ends."""

    def __init__(self, message: str, close_code: int, param: str | None = None, code: str = "invalid_message"):
        super().__init__(400, message, param=param, code=code)
        self.close_code = close_code


def _close_code(error: ApiError) -> int:
    if isinstance(error, ClientMessageError):
        return error.close_code
    if error.code == "invalid_unicode":
        return CLOSE_INVALID_PAYLOAD
    if error.code == "shutting_down":
        return CLOSE_SERVICE_RESTART
    if error.status in (429, 503):
        return CLOSE_TRY_LATER
    return CLOSE_INTERNAL if error.status >= 500 else CLOSE_POLICY


async def receive_object(ws: WebSocket, timeout_s: float, waiting_for: str) -> dict:
    try:
        message = await asyncio.wait_for(ws.receive(), timeout_s)
    except asyncio.TimeoutError:
        raise ClientMessageError(f"no {waiting_for} within {timeout_s:g} s", CLOSE_POLICY, code="idle_timeout") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ClientMessageError("binary messages are not accepted; send JSON text messages",
                                 CLOSE_UNSUPPORTED_DATA)
    try:
        return parse_json_object(message["text"])
    except ApiError as exc:
        raise ClientMessageError(exc.message, CLOSE_INVALID_PAYLOAD, code="invalid_json") from None


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ClientMessageError(f"{name}: must be true or false, got {json.dumps(value)[:40]}", CLOSE_POLICY, name)
    return value


async def serve_stream(ws: WebSocket, engine_or_error, metrics, idle_timeout_s: float, streams: OpenStreams) -> None:
    """One WebSocket session from accept to close. `engine_or_error` returns the engine or raises ApiError."""
    await ws.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None)
    record = RequestRecord("websocket_stream", metrics, ws.headers.get("x-request-id"))
    stream: SpeechStream | None = None
    reader: asyncio.Task | None = None
    try:
        first = await receive_object(ws, idle_timeout_s, "request")
        check_fields(first, FIRST_FIELDS)
        streaming = _flag(first, "streaming_text")
        ended = _flag(first, "end") or not streaming
        engine: Engine = engine_or_error()
        request, _ = speech_request(engine, first, default_format="pcm", allow_empty_text=streaming)
        record.voice, record.chars, record.format = request.voice, len(request.text), request.format
        stream = streams.open(engine, request, streaming_text=streaming)
        if streaming:
            reader = asyncio.create_task(_read_text(ws, stream, request.text, ended, idle_timeout_s, record))
        async with aclosing(encoded_audio(stream, request, record, streams)) as audio:
            async for data in audio:
                await ws.send_bytes(data)
        await ws.send_text(json.dumps({"done": True, "metrics": metrics_json(record.id, record.session)}))
        await ws.close(CLOSE_OK)
    except WebSocketDisconnect:
        record.done("cancelled", "the client went away")
    except SessionFailed as exc:
        error = reader.exception() if reader and reader.done() and not reader.cancelled() else None
        if isinstance(error, WebSocketDisconnect):  # the client left while its text was still coming
            return
        if error is None and exc.outcome == "unavailable":  # ended by shutdown
            error = ApiError(503, str(exc), type="server_error", code="shutting_down", outcome=exc.outcome)
        await _fail(ws, record, ApiError.from_exception(error) if error else
                    ApiError(500, str(exc), type="server_error", code=exc.outcome, outcome=exc.outcome))
    except Exception as exc:  # ApiError, RequestError, BusyError, or a bug
        await _fail(ws, record, ApiError.from_exception(exc))
    finally:
        if reader is not None:
            reader.cancel()
        if stream is not None:
            stream.cancel()


async def _read_text(ws: WebSocket, stream: SpeechStream, first_text: str, ended: bool, idle_timeout_s: float,
                     record: RequestRecord) -> None:
    """Feed text messages to the stream until `end`; a bad one cancels the session (its error is kept)."""
    text, has_speech = first_text, False
    try:
        while True:
            has_speech = has_speech or bool(text.strip())
            if ended and not has_speech:
                raise RequestError("text", "is empty")
            if text or ended:
                stream.add_text(text, final=ended)
            if ended:
                return
            body = await receive_object(ws, idle_timeout_s, "text or end message")
            check_fields(body, PIECE_FIELDS)
            text = body.get("text", body.get("input", ""))
            ended = _flag(body, "end")
            record.chars += len(text)
    except Exception as exc:
        # Recorded before the cancel, which ends the stream (and would record it) as cancelled.
        if isinstance(exc, WebSocketDisconnect):
            record.done("cancelled", "the client went away")
        elif isinstance(exc, (ApiError, RequestError)):
            error = ApiError.from_exception(exc)
            record.done(error.outcome, error.message)
        stream.cancel()
        raise


async def _fail(ws: WebSocket, record: RequestRecord, error: ApiError) -> None:
    record.done(error.outcome, error.message)
    if ws.client_state is not WebSocketState.CONNECTED:
        return
    try:
        await ws.send_text(json.dumps(error.body()))
        await ws.close(_close_code(error), reason=error.message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left first
