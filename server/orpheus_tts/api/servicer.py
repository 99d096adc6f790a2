"""The `orpheus.tts.v1.TextToSpeech` service: RPCs in, engine streams out, status codes that mean what they say.

Every RPC runs inside an `RpcRecord` (a `request_log.RequestRecord`), which turns our exceptions
into gRPC status codes, counts the outcome, and writes one log line when the request ends:

    INVALID_ARGUMENT    a field is invalid; the message starts with the field's name
    UNAUTHENTICATED     no known API key (the interceptor in grpc_access.py, before any method)
    RESOURCE_EXHAUSTED  the admission queue is full, or the request waited its bound there, or its
                        API key is over its own limit (trailing metadata `retry-after`, seconds)
    UNAVAILABLE         the model is still loading, the server is draining, or a stream outlived the
                        shutdown's grace (it was ended with the audio it had)
    DEADLINE_EXCEEDED   the session ran past `scheduler.session_timeout_s`
    CANCELLED           the client went away (its session is ended at the engine's next step)
    INTERNAL            the engine failed
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from orpheus_tts import orpheus
from orpheus_tts.api import messages
from orpheus_tts.api.open_streams import OpenStreams
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.api.request_log import RequestRecord
from orpheus_tts.engine import AudioChunk, Engine, Outcome, SpeechStream
from orpheus_tts.errors import BusyError, RequestError
from orpheus_tts.metrics import ServerMetrics
from orpheus_tts.requests import ENGLISH_VOICES, SpeechRequest
from orpheus_tts.voices import Voice

log = logging.getLogger("orpheus_tts.api")

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
REQUEST_ID_KEY = "x-request-id"  # a client may send its own; the server echoes it in trailing metadata

_OUTCOME_STATUS = {
    Outcome.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Outcome.CANCELLED: grpc.StatusCode.CANCELLED,
    Outcome.ERROR: grpc.StatusCode.INTERNAL,
    Outcome.REFUSED: grpc.StatusCode.RESOURCE_EXHAUSTED,  # SpeechStream raises AtCapacityError first
}


class RpcFailure(Exception):
    """End the RPC with `code`."""

    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


class RpcRecord(RequestRecord):
    """A gRPC call's `RequestRecord`, as a context manager that turns the exceptions raised inside it
    into gRPC statuses (and logs the call once, with its outcome)."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext, metrics: ServerMetrics,
                 log_level: int = logging.INFO):
        super().__init__(method, metrics, dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY), log_level)
        self.context = context

    async def __aenter__(self) -> "RpcRecord":
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.id),))
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the client went away
            remaining = self.context.time_remaining()
            self.done("deadline_exceeded" if remaining is not None and remaining <= 0 else "cancelled")
            return False
        failure = self._failure(exc)
        if failure is None:
            self.done("ok")
            return False
        self.done(failure.code.name.lower(), failure.message)
        await self.context.abort(failure.code, failure.message,
                                 trailing_metadata=((REQUEST_ID_KEY, self.id), *failure.metadata))
        return False  # abort raised

    def _failure(self, exc: BaseException | None) -> RpcFailure | None:
        if exc is None:
            return None
        if isinstance(exc, RpcFailure):
            return exc
        if isinstance(exc, RequestError):
            return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, BusyError):
            return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                              (("retry-after", str(exc.retry_after_s)),))
        log.error("request %s failed", self.id, exc_info=exc)
        return RpcFailure(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__} (request {self.id})")


_HANDLER_KINDS = {  # (client streaming, server streaming): how grpc wraps the method
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: "TextToSpeechServicer", server: grpc.aio.Server) -> None:
    """Register the servicer's methods, as the generated add_TextToSpeechServicer_to_server
    would, but with requests parsed by `messages.lenient_parser`: a message that does not parse
    reaches the method and is refused with INVALID_ARGUMENT, not UNKNOWN from inside gRPC."""
    handlers = {}
    for method in tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].methods:
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=messages.lenient_parser(getattr(tts_pb2, method.input_type.name)),
            response_serializer=getattr(tts_pb2, method.output_type.name).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, metrics: ServerMetrics, default_voice: str, idle_timeout_s: float = 30.0,
                 streams: OpenStreams | None = None, voices: dict[str, Voice] | None = None):
        self.metrics = metrics
        self.voices = voices or ENGLISH_VOICES  # by name: `server_voices`, which the engine validates against
        self.streams = streams or OpenStreams()
        self.default_voice = default_voice  # ListVoices answers it while the model loads
        self.idle_timeout_s = idle_timeout_s  # a StreamingSynthesize client silent this long (text due) is ended
        self.engine: Engine | None = None  # set by the server once the model is warmed up
        self.draining = False  # set by the server at shutdown: new requests are refused

    async def Synthesize(self, request: tts_pb2.SynthesizeRequest, context) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        async with RpcRecord("Synthesize", context, self.metrics) as record:
            request = messages.well_formed(request)
            engine = self._ready_engine()
            record.voice, record.chars = request.voice or self.default_voice, len(request.text)
            speech = messages.speech_request(engine, request, request.text)
            record.voice, record.format = speech.voice, speech.format
            stream = self.streams.open(engine, speech)
            try:
                async for response in self._respond(stream, speech, record, tts_pb2.SynthesizeResponse):
                    yield response
            finally:
                stream.cancel()  # a no-op for a finished session

    async def StreamingSynthesize(self, request_iterator, context) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
        async with RpcRecord("StreamingSynthesize", context, self.metrics) as record:
            engine = self._ready_engine()
            requests = aiter(request_iterator)
            first = messages.well_formed(await anext(requests, None))
            config = first.config if first is not None and first.HasField("config") else \
                tts_pb2.StreamingSynthesisConfig()
            record.voice = config.voice or self.default_voice
            speech = messages.speech_request(engine, config, "", allow_empty_text=True)
            record.voice, record.format = speech.voice, speech.format
            # No session (no slot, no share of the capacity) until the client has sent some text.
            early = [first] if first is not None and first.HasField("input") else []
            while first is not None and not early:
                request = _later_request(await self._next(requests))
                if request is None:
                    break  # closed with no text: the empty text is refused below, as Synthesize refuses it
                early.append(request)
            stream = self.streams.open(engine, speech, streaming_text=True)
            text = messages.StreamedText(stream)
            reader = asyncio.create_task(self._read_text(early, requests, text, stream, record))
            try:
                async for response in self._respond(stream, speech, record, tts_pb2.StreamingSynthesizeResponse):
                    yield response
            except RpcFailure:
                if reader.done() and not reader.cancelled() and reader.exception():
                    raise reader.exception() from None  # why the session was cancelled
                raise
            finally:
                reader.cancel()
                stream.cancel()
                if reader.done() and not reader.cancelled():
                    reader.exception()  # retrieved: a bad piece after the audio ended changes nothing

    async def ListVoices(self, request, context) -> tts_pb2.ListVoicesResponse:
        async with RpcRecord("ListVoices", context, self.metrics, logging.DEBUG):
            messages.well_formed(request)
            return tts_pb2.ListVoicesResponse(voices=[tts_pb2.Voice(name=v.name, language=v.language,
                                                                    adapter=v.adapter or "")
                                                      for v in self.voices.values()],
                                              default_voice=self.default_voice, emotion_tags=orpheus.EMOTION_TAGS)

    async def GetStats(self, request, context) -> tts_pb2.GetStatsResponse:
        async with RpcRecord("GetStats", context, self.metrics, logging.DEBUG):
            messages.well_formed(request)
            if self.engine is None:
                return tts_pb2.GetStatsResponse(ready=False)
            s = self.engine.stats()
            return tts_pb2.GetStatsResponse(
                ready=self.engine.ready, total_sessions=s.total_sessions, completed_sessions=s.completed_sessions,
                rejected_sessions=s.rejected_sessions, active_sessions=s.active_sessions,
                pending_sessions=s.pending_sessions, max_concurrent_sessions=s.max_concurrent,
                used_slots=s.used_slots, free_slots=s.free_slots, total_tokens=s.total_tokens,
                total_batches=s.total_batches,
            )

    # -- helpers --------------------------------------------------------------------------
    def _ready_engine(self) -> Engine:
        if self.draining:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self.engine is None or not self.engine.ready:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        return self.engine

    async def _respond(self, stream: SpeechStream, speech: SpeechRequest, record: RpcRecord, response_type):
        """The format, the audio as the engine makes it, then the metrics (or an RpcFailure)."""
        encoder = messages.AudioEncoder(speech)
        yield response_type(format=messages.audio_format(speech, record.id))
        async for event in stream.events():
            if isinstance(event, AudioChunk):
                response = response_type(audio=encoder.encode(event))
                record.audio_sent()
                yield response
                continue
            record.session = event.metrics
            if event.outcome is Outcome.CANCELLED and self.streams.ending:
                raise RpcFailure(grpc.StatusCode.UNAVAILABLE, self.streams.ending)
            if event.outcome is not Outcome.OK:
                message = event.error or f"session {event.outcome.value}"
                if event.outcome is Outcome.ERROR:  # the server failed: the id finds its log lines
                    message = f"{message} (request {record.id})"
                raise RpcFailure(_OUTCOME_STATUS[event.outcome], message)
            yield response_type(metrics=messages.synthesis_metrics(record.id, event.metrics))

    async def _read_text(self, early: list, requests, text: messages.StreamedText, stream: SpeechStream,
                         record: RpcRecord) -> None:
        """Feed the client's text to the stream; on a bad piece or a client silent for the idle
        timeout while text is due, cancel the session and keep the error."""
        try:
            for request in early:
                record.chars += len(request.input.text or request.input.text_utf8)
                text.add(request.input)
            while True:  # after end_of_text, a piece more is refused; the client may stay silent
                request = _later_request(await (anext(requests, None) if text.ended else self._next(requests)))
                if request is None:
                    break
                record.chars += len(request.input.text or request.input.text_utf8)
                text.add(request.input)
            text.end()
        except (RequestError, RpcFailure):
            stream.cancel()
            raise

    async def _next(self, requests):
        """The client's next request (None once it closed its side), within the idle timeout."""
        try:
            return await asyncio.wait_for(anext(requests, None), self.idle_timeout_s)
        except asyncio.TimeoutError:
            raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"no text for {self.idle_timeout_s:g} s (the server's idle timeout): send text, or "
                             f"end_of_text to finish") from None


def _later_request(request):
    """A StreamingSynthesize request after the first, checked (None: the client closed its side)."""
    request = messages.well_formed(request)
    if request is not None and request.HasField("config"):
        raise RequestError("config", "only the first request may carry config")
    return request
