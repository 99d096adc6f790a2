from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_S16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_WAV: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM_S16LE: AudioEncoding
AUDIO_ENCODING_WAV: AudioEncoding

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "temperature", "top_p", "repetition_penalty", "seed", "encoding", "ignore_end_of_speech", "adapter")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IGNORE_END_OF_SPEECH_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int
    encoding: AudioEncoding
    ignore_end_of_speech: bool
    adapter: str
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., ignore_end_of_speech: _Optional[bool] = ..., adapter: _Optional[str] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("format", "audio", "metrics")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    format: AudioFormat
    audio: AudioChunk
    metrics: SynthesisMetrics
    def __init__(self, format: _Optional[_Union[AudioFormat, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., metrics: _Optional[_Union[SynthesisMetrics, _Mapping]] = ...) -> None: ...

class StreamingSynthesizeRequest(_message.Message):
    __slots__ = ("config", "input")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    config: StreamingSynthesisConfig
    input: TextInput
    def __init__(self, config: _Optional[_Union[StreamingSynthesisConfig, _Mapping]] = ..., input: _Optional[_Union[TextInput, _Mapping]] = ...) -> None: ...

class StreamingSynthesisConfig(_message.Message):
    __slots__ = ("voice", "temperature", "top_p", "repetition_penalty", "seed", "encoding", "ignore_end_of_speech", "adapter")
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IGNORE_END_OF_SPEECH_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    voice: str
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int
    encoding: AudioEncoding
    ignore_end_of_speech: bool
    adapter: str
    def __init__(self, voice: _Optional[str] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., ignore_end_of_speech: _Optional[bool] = ..., adapter: _Optional[str] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "text_utf8", "end_of_text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_UTF8_FIELD_NUMBER: _ClassVar[int]
    END_OF_TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_utf8: bytes
    end_of_text: bool
    def __init__(self, text: _Optional[str] = ..., text_utf8: _Optional[bytes] = ..., end_of_text: _Optional[bool] = ...) -> None: ...

class StreamingSynthesizeResponse(_message.Message):
    __slots__ = ("format", "audio", "metrics")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    format: AudioFormat
    audio: AudioChunk
    metrics: SynthesisMetrics
    def __init__(self, format: _Optional[_Union[AudioFormat, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., metrics: _Optional[_Union[SynthesisMetrics, _Mapping]] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("sample_rate_hz", "encoding", "channels", "bits_per_sample", "request_id")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    encoding: AudioEncoding
    channels: int
    bits_per_sample: int
    request_id: str
    def __init__(self, sample_rate_hz: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., channels: _Optional[int] = ..., bits_per_sample: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data", "first_frame", "frames", "text_piece")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TEXT_PIECE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    first_frame: int
    frames: int
    text_piece: int
    def __init__(self, data: _Optional[bytes] = ..., first_frame: _Optional[int] = ..., frames: _Optional[int] = ..., text_piece: _Optional[int] = ...) -> None: ...

class SynthesisMetrics(_message.Message):
    __slots__ = ("request_id", "ttfb_ms", "queue_ms", "elapsed_ms", "audio_ms", "real_time_factor", "tokens", "frames", "text_pieces")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TTFB_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TEXT_PIECES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ttfb_ms: float
    queue_ms: float
    elapsed_ms: float
    audio_ms: float
    real_time_factor: float
    tokens: int
    frames: int
    text_pieces: int
    def __init__(self, request_id: _Optional[str] = ..., ttfb_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., elapsed_ms: _Optional[float] = ..., audio_ms: _Optional[float] = ..., real_time_factor: _Optional[float] = ..., tokens: _Optional[int] = ..., frames: _Optional[int] = ..., text_pieces: _Optional[int] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "default_voice", "emotion_tags")
    VOICES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VOICE_FIELD_NUMBER: _ClassVar[int]
    EMOTION_TAGS_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    default_voice: str
    emotion_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., default_voice: _Optional[str] = ..., emotion_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("name", "language", "adapter")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    adapter: str
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., adapter: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("ready", "total_sessions", "completed_sessions", "rejected_sessions", "active_sessions", "pending_sessions", "max_concurrent_sessions", "used_slots", "free_slots", "total_tokens", "total_batches")
    READY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    USED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    total_sessions: int
    completed_sessions: int
    rejected_sessions: int
    active_sessions: int
    pending_sessions: int
    max_concurrent_sessions: int
    used_slots: int
    free_slots: int
    total_tokens: int
    total_batches: int
    def __init__(self, ready: _Optional[bool] = ..., total_sessions: _Optional[int] = ..., completed_sessions: _Optional[int] = ..., rejected_sessions: _Optional[int] = ..., active_sessions: _Optional[int] = ..., pending_sessions: _Optional[int] = ..., max_concurrent_sessions: _Optional[int] = ..., used_slots: _Optional[int] = ..., free_slots: _Optional[int] = ..., total_tokens: _Optional[int] = ..., total_batches: _Optional[int] = ...) -> None: ...
