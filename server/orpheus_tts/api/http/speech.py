"""`POST /v1/audio/speech`: OpenAI's request in, audio out as the engine makes it.

The body is OpenAI's (`model`, `input`, `voice`, `response_format`, `speed`, `stream_format`,
`instructions`; a `model` that names one of the server's LoRA adapters selects it, any other is
the base model) plus the seed's `text` and our sampling extensions (`temperature`, `top_p`,
`repetition_penalty`, `seed`, and `ignore_end_of_speech` as gRPC has it, for benchmarks that speak
every text's whole budget; the SDK sends them through `extra_body`). Unknown fields are
refused, as OpenAI refuses them. The response streams (chunked) from the first audio on:
raw audio for `stream_format: audio`, or `speech.audio.delta` events for `sse`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from orpheus_tts.api.http.errors import ApiError, internal, metrics_json
from orpheus_tts.api.request_log import RequestRecord
from orpheus_tts.api.open_streams import OpenStreams, ShutdownCut
from orpheus_tts.audio import MEDIA_TYPES, stream_encoder
from orpheus_tts.engine import AudioChunk, Engine, JoinSmoother, Outcome, SessionEnd, SpeechStream
from orpheus_tts.requests import AUDIO_FORMATS, SpeechRequest

SPEED_RANGE = (0.25, 4.0)  # OpenAI's range; only 1.0 is spoken (see `check_speed`)
STREAM_FORMATS = ("audio", "sse")
MAX_INT_DIGITS = 64  # longer integers in a body read as infinity (see `_parse_int`)
_STRINGS = ("model", "input", "text", "voice", "response_format", "stream_format", "instructions")
_NUMBERS = ("speed", "temperature", "top_p", "repetition_penalty")
_SAMPLING = ("temperature", "top_p", "repetition_penalty", "seed", "ignore_end_of_speech")
SPEECH_FIELDS = frozenset(_STRINGS + _NUMBERS + _SAMPLING)
_OUTCOME_NAMES = {Outcome.TIMEOUT: "deadline_exceeded", Outcome.CANCELLED: "cancelled", Outcome.ERROR: "internal",
                  Outcome.REFUSED: "resource_exhausted"}


@dataclass(frozen=True)
class SpeechOptions:
    """What the API adds around the engine request."""

    text_field: str  # "input" or "text": where error messages point
    stream_format: str = "audio"


class SessionFailed(Exception):
    """The engine ended the session badly after the response had started."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


def parse_json_object(raw: bytes | str) -> dict:
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", code="invalid_json") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8: {exc.reason}", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _parse_int(digits: str) -> int | float:
    """A JSON integer; one too long for any field reads as infinity, so the field's own check
    refuses it by name (Python would raise on over 4,300 digits, and parsing them costs time)."""
    if len(digits) > MAX_INT_DIGITS:
        return -math.inf if digits.startswith("-") else math.inf
    return int(digits)


def check_fields(body: dict, allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0],
                       code="unknown_parameter")
    for name in _STRINGS:
        if name in body and not isinstance(body[name], str):
            raise ApiError(400, f"{name}: must be a string, got {json.dumps(body[name])[:40]}", param=name,
                           code="invalid_type")


def check_speed(body: dict) -> None:
    """Speech at 1.0 only: a time-stretch would need a phase vocoder we do not ship (see README)."""
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
        raise ApiError(400, f"speed: must be a number, got {json.dumps(speed)[:40]}", param="speed",
                       code="invalid_type")
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise ApiError(400, f"speed: {speed} is out of range [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}]", param="speed",
                       code="invalid_value")
    if speed != 1.0:
        raise ApiError(400, f"speed: only 1.0 is supported by this server, got {speed}", param="speed",
                       code="unsupported_value")


def speech_request(engine: Engine, body: dict, default_format: str, allow_empty_text: bool = False,
                   ) -> tuple[SpeechRequest, str]:
    """Validate the shared fields of a speech body; returns the request and its text field's name."""
    if "input" in body and "text" in body and body["input"] != body["text"]:
        raise ApiError(400, "give the text as either input or text, not both", param="input", code="invalid_value")
    text_field = "text" if "text" in body else "input"
    if text_field not in body and not allow_empty_text:
        raise ApiError(400, "input: is required", param="input", code="missing_required_parameter")
    if body.get("instructions"):
        raise ApiError(400, "instructions: not supported by Orpheus; put emotion tags such as <laugh> in the input",
                       param="instructions", code="unsupported_value")
    check_speed(body)
    fields = {name: body[name] for name in _SAMPLING if name in body}
    adapter = engine.adapters.for_model(body.get("model")) if engine.adapters is not None else None
    if adapter is not None:
        fields["adapter"] = adapter
    try:
        request = engine.make_request(body.get(text_field, ""), voice=body.get("voice"),
                                      format=body.get("response_format") or default_format,
                                      allow_empty_text=allow_empty_text, **fields)
    except Exception as exc:
        raise ApiError.from_exception(exc, text_field) from None
    return request, text_field


def check_content_type(request: Request) -> None:
    """JSON only, as OpenAI's SDK sends it: a page on another site can POST text/plain without asking
    the browser's permission (no preflight), but not application/json."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        shown = f"is {media_type!r}" if media_type else "is missing"
        raise ApiError(415, f"Content-Type: must be application/json, {shown}", param="Content-Type",
                       code="unsupported_media_type")


async def started_unless_gone(stream: SpeechStream, request: Request) -> bool:
    """Wait for the stream's first event (raising as `started` does), or for the client to hang
    up while it waits in the queue; False if it hung up first. uvicorn tells the app of a hang-up
    only through `receive` (the body is read by now, so the next message is the disconnect)."""
    started = asyncio.ensure_future(stream.started())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({started, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        started.cancel()
        raise
    finally:
        gone.cancel()  # the response listens for the disconnect from here on
    if started not in done:
        started.cancel()
        return False
    started.result()
    return True


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > max_bytes:
            raise ApiError(413, f"the body is over the limit of {max_bytes} bytes", code="body_too_large")
    return bytes(data)


def parse_speech(engine: Engine, raw: bytes) -> tuple[SpeechRequest, SpeechOptions]:
    body = parse_json_object(raw)
    check_fields(body, SPEECH_FIELDS)
    stream_format = body.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise ApiError(400, f"stream_format: unknown value {stream_format!r}; supported: {', '.join(STREAM_FORMATS)}",
                       param="stream_format", code="invalid_value")
    request, text_field = speech_request(engine, body, default_format=default_format(body))
    return request, SpeechOptions(text_field, stream_format)


def default_format(body: dict) -> str:
    """OpenAI's default (mp3) for OpenAI's `input`; WAV for the seed's `text` (its curl writes speech.wav)."""
    return "mp3" if "input" in body and "mp3" in AUDIO_FORMATS else "wav"


def speech_response(stream: SpeechStream, request: SpeechRequest, options: SpeechOptions,
                    record: RequestRecord, streams: OpenStreams) -> StreamingResponse:
    headers = {"X-Request-Id": record.id, "Cache-Control": "no-store"}
    if options.stream_format == "sse":
        return StreamingResponse(_sse_body(stream, request, record, streams), media_type="text/event-stream",
                                 headers=headers)
    return StreamingResponse(_audio_body(stream, request, record, streams), media_type=MEDIA_TYPES[request.format],
                             headers=headers)


async def encoded_audio(stream: SpeechStream, request: SpeechRequest, record: RequestRecord,
                        streams: OpenStreams) -> AsyncIterator[bytes]:
    """The stream's audio, joins smoothed and encoded; records the outcome; raises SessionFailed
    (outcome `unavailable` for a stream the shutdown ended)."""
    encoder = stream_encoder(request.format)
    smoother = JoinSmoother()
    try:
        async for event in stream.events():
            if isinstance(event, AudioChunk):
                data = await _encode(encoder.encode, smoother.smooth(event.samples, event.piece))
                if data:
                    record.audio_sent()
                    yield data
                continue
            record.session = event.metrics
            _check_outcome(event, streams, record.id)
        data = await _encode(encoder.finish)
        if data:
            yield data
        record.done("ok")
    except SessionFailed as exc:
        record.done(exc.outcome, str(exc))
        raise
    except (asyncio.CancelledError, GeneratorExit):
        record.done("cancelled", "the client went away")
        raise
    finally:
        stream.cancel()  # a no-op for a finished session


async def _encode(fn, *args) -> bytes:
    """PCM is cheap enough for the event loop; compressed encoders run beside it."""
    return fn(*args) if fn.__self__.cheap else await asyncio.to_thread(fn, *args)


def _check_outcome(end: SessionEnd, streams: OpenStreams, request_id: str) -> None:
    if end.outcome is Outcome.CANCELLED and streams.ending:
        raise SessionFailed("unavailable", streams.ending)
    if end.outcome is not Outcome.OK:
        message = end.error or f"session {end.outcome.value}"
        if end.outcome is Outcome.ERROR:  # the server failed: the id finds its log lines
            message = f"{message} (request {request_id})"
        raise SessionFailed(_OUTCOME_NAMES[end.outcome], message)


async def _audio_body(stream: SpeechStream, request: SpeechRequest, record: RequestRecord,
                      streams: OpenStreams) -> AsyncIterator[bytes]:
    """Chunks of the file; a session that fails midway aborts the body, so the client sees it cut."""
    try:
        async with aclosing(encoded_audio(stream, request, record, streams)) as audio:
            async for data in audio:
                yield data
    except SessionFailed as exc:
        if exc.outcome == "unavailable":
            raise ShutdownCut(str(exc)) from None
        raise


async def _sse_body(stream: SpeechStream, request: SpeechRequest, record: RequestRecord,
                    streams: OpenStreams) -> AsyncIterator[bytes]:
    try:
        async with aclosing(encoded_audio(stream, request, record, streams)) as audio:
            async for data in audio:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except SessionFailed as exc:
        yield _event({"type": "error", **internal(str(exc), exc.outcome).body()})
        return
    m = record.session
    yield _event({"type": "speech.audio.done", "usage": {"output_tokens": m.tokens if m else 0},
                  "metrics": metrics_json(record.id, m) if m else {}})


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
