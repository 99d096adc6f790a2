"""Between protobuf messages and the engine: requests in, audio and metrics messages out."""

from __future__ import annotations

import codecs

from google.protobuf.message import DecodeError

from orpheus_tts import orpheus
from orpheus_tts.api.gen import tts_pb2
from orpheus_tts.audio import to_pcm16, wav_header
from orpheus_tts.engine import AudioChunk, Engine, SessionMetrics, SpeechStream
from orpheus_tts.errors import RequestError
from orpheus_tts.requests import SpeechRequest

ENCODINGS = {
    tts_pb2.AUDIO_ENCODING_UNSPECIFIED: "pcm",
    tts_pb2.AUDIO_ENCODING_PCM_S16LE: "pcm",
    tts_pb2.AUDIO_ENCODING_WAV: "wav",
}
ENCODING_OF_FORMAT = {"pcm": tts_pb2.AUDIO_ENCODING_PCM_S16LE, "wav": tts_pb2.AUDIO_ENCODING_WAV}
_OPTIONAL_FIELDS = ("temperature", "top_p", "repetition_penalty", "seed")


class MalformedRequest:
    """A request message that did not parse (invalid UTF-8 in a string field, a corrupt wire
    format). gRPC would answer such a message itself with UNKNOWN; handed to the servicer instead,
    it is refused with INVALID_ARGUMENT like any other bad input."""

    def __init__(self, reason: str):
        self.reason = reason


def lenient_parser(message_type):
    """A request deserializer that returns MalformedRequest instead of raising."""

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc))

    return parse


def well_formed(request):
    """The request itself, or a RequestError if it did not parse."""
    if isinstance(request, MalformedRequest):
        raise RequestError("request", f"malformed message: {request.reason}")
    return request


def speech_request(engine: Engine, message, text: str, allow_empty_text: bool = False) -> SpeechRequest:
    """Validate a SynthesizeRequest or StreamingSynthesisConfig; errors name the proto field."""
    if message.encoding not in ENCODINGS:
        supported = ", ".join(tts_pb2.AudioEncoding.Name(e) for e in ENCODINGS if e)
        raise RequestError("encoding", f"unknown encoding {message.encoding}; supported: {supported}")
    fields = {name: getattr(message, name) for name in _OPTIONAL_FIELDS if message.HasField(name)}
    return engine.make_request(text, voice=message.voice,
                               format=ENCODINGS[message.encoding], allow_empty_text=allow_empty_text,
                               ignore_end_of_speech=message.ignore_end_of_speech, adapter=message.adapter or None,
                               **fields)


def audio_format(request: SpeechRequest, request_id: str) -> tts_pb2.AudioFormat:
    return tts_pb2.AudioFormat(sample_rate_hz=orpheus.SAMPLE_RATE_HZ, encoding=ENCODING_OF_FORMAT[request.format],
                               channels=1, bits_per_sample=16, request_id=request_id)


def synthesis_metrics(request_id: str, m: SessionMetrics) -> tts_pb2.SynthesisMetrics:
    return tts_pb2.SynthesisMetrics(
        request_id=request_id, ttfb_ms=_ms(m.ttfb_s), queue_ms=_ms(m.queue_s), elapsed_ms=_ms(m.elapsed_s),
        audio_ms=_ms(m.audio_s), real_time_factor=m.real_time_factor or 0.0, tokens=m.tokens, frames=m.frames,
        text_pieces=m.pieces,
    )


def _ms(seconds: float | None) -> float:
    return 0.0 if seconds is None else seconds * 1000.0


class AudioEncoder:
    """Engine audio to AudioChunk messages; WAV puts its streaming header before the first samples."""

    def __init__(self, request: SpeechRequest):
        self._header = wav_header() if request.format == "wav" else b""

    def encode(self, chunk: AudioChunk) -> tts_pb2.AudioChunk:
        data, self._header = self._header + to_pcm16(chunk.samples), b""
        return tts_pb2.AudioChunk(data=data, first_frame=chunk.first_frame, frames=chunk.frames,
                                  text_piece=chunk.piece)


class StreamedText:
    """Text pieces from a client into a speech stream.

    Joins UTF-8 characters split across `text_utf8` pieces, and refuses a stream whose text
    ends up empty, as `Synthesize` refuses empty text.
    """

    def __init__(self, stream: SpeechStream):
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._has_speech = False
        self.ended = False

    def add(self, piece: tts_pb2.TextInput) -> None:
        final = piece.end_of_text
        if piece.WhichOneof("text_content") == "text_utf8":
            text = self._decode(piece.text_utf8, final)
        else:
            text = self._decode(b"", final=True) + piece.text  # a split character must be complete by now
        self._add(text, final)

    def end(self) -> None:
        """The client closed its side: speak what is buffered, as if `end_of_text` had been sent."""
        if not self.ended:
            self._add(self._decode(b"", final=True), final=True)

    def _decode(self, data: bytes, final: bool) -> str:
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            self._decoder.reset()
            raise RequestError("text_utf8", f"invalid UTF-8 ({exc.reason})") from None

    def _add(self, text: str, final: bool) -> None:
        if self.ended:
            raise RequestError("input", "text arrived after end_of_text")
        self._has_speech = self._has_speech or bool(text.strip())
        if final and not self._has_speech:
            raise RequestError("text", "is empty")
        self._stream.add_text(text, final)
        self.ended = final
