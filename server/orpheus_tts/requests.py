"""Speech requests and their validation: the engine never sees a bad request.

Every check names the offending field, so the gRPC and HTTP layers can turn a `RequestError`
straight into INVALID_ARGUMENT / HTTP 400 with a useful message.
"""

from __future__ import annotations

import math
import struct
import re
from dataclasses import dataclass
from typing import Mapping

from orpheus_tts.audio import encoded_formats
from orpheus_tts.config import SamplingConfig
from orpheus_tts.errors import RequestError
from orpheus_tts.voices import ENGLISH, Voice, canonical

# PCM s16le mono 24 kHz, the same with a WAV header, then what libsndfile can encode here
# (flac, mp3, opus with libsndfile >= 1.1).
AUDIO_FORMATS = ("pcm", "wav", *encoded_formats())

TEMPERATURE_RANGE = (0.0, 2.0)  # 0 means greedy
TOP_P_RANGE = (0.0, 1.0)  # exclusive of 0
REPETITION_PENALTY_RANGE = (1.0, 2.0)
SEED_RANGE = (0, 2**32 - 1)
ENGLISH_VOICES = {voice.name: voice for voice in ENGLISH}
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a directory name under adapters.dir


@dataclass(frozen=True)
class SpeechRequest:
    """A validated request. Build it with `SpeechRequest.create`, which checks every field."""

    text: str
    voice: str
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None
    format: str
    # Benchmarks: speak the whole token budget, never stopping at the model's end of speech,
    # so every run of a workload produces the same amount of audio.
    ignore_end_of_speech: bool = False
    adapter: str | None = None  # a LoRA adapter (a fine-tuned voice), by name; None: the base model

    @classmethod
    def create(
        cls,
        text: str,
        *,
        defaults: SamplingConfig,
        max_text_chars: int,
        voice: str = "tara",
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        format: str = "pcm",
        allow_empty_text: bool = False,
        ignore_end_of_speech: bool = False,
        adapter: str | None = None,
        voices: Mapping[str, Voice] = ENGLISH_VOICES,
    ) -> "SpeechRequest":
        """`voices`: the voices this server speaks, by name (the model's, and those its adapters
        add); a voice on an adapter runs on it unless the request names another `adapter`."""
        if not isinstance(text, str):
            raise RequestError("text", "must be a string")
        check_unicode("text", text)
        if not allow_empty_text and not text.strip():
            raise RequestError("text", "is empty")
        check_text_length(len(text), max_text_chars)
        voice = canonical(voice)
        if not isinstance(voice, str) or voice not in voices:
            raise RequestError("voice", f"unknown voice {str(voice)[:80]!r}; available: {', '.join(voices)}")
        adapter = voices[voice].adapter if adapter is None else adapter
        if adapter is not None and (not isinstance(adapter, str) or not ADAPTER_NAME.fullmatch(adapter)):
            raise RequestError("adapter", f"must be an adapter's name (letters, digits, '.', '_', '-'; at most 64), "
                                          f"got {str(adapter)[:80]!r}")
        temperature = _in_range("temperature", defaults.temperature if temperature is None else temperature,
                                *TEMPERATURE_RANGE)
        top_p = _in_range("top_p", defaults.top_p if top_p is None else top_p, *TOP_P_RANGE)
        if top_p == 0 or _as_float32(top_p) == 0:  # the sampler's float32: 5e-324 would keep no candidate
            raise RequestError("top_p", f"must be greater than 0, got {top_p!r}, which is 0 as a float32")
        repetition_penalty = _in_range(
            "repetition_penalty",
            defaults.repetition_penalty if repetition_penalty is None else repetition_penalty,
            *REPETITION_PENALTY_RANGE,
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
            raise RequestError("seed", f"must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")
        if format not in AUDIO_FORMATS:
            raise RequestError("format", f"unknown format {format!r}; supported: {', '.join(AUDIO_FORMATS)}")
        if not isinstance(ignore_end_of_speech, bool):
            raise RequestError("ignore_end_of_speech", f"must be true or false, got {ignore_end_of_speech!r}")
        return cls(text, voice, float(temperature), float(top_p), float(repetition_penalty), seed, format,
                   ignore_end_of_speech, adapter)


def check_unicode(field: str, text: str) -> None:
    """Text must be encodable as UTF-8: JSON may carry a lone surrogate (`"\\ud800"`), which no
    tokenizer or encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(field, f"is not valid Unicode: a lone surrogate at character {exc.start}",
                           code="invalid_unicode") from None


def check_text_length(chars: int, max_text_chars: int, streamed: bool = False) -> None:
    """The one text-length rule: a request's text, or all the text a stream has received so far."""
    if chars > max_text_chars:
        what = f"streamed text reached {chars} characters" if streamed else f"is {chars} characters"
        raise RequestError("text", f"{what}; the limit is {max_text_chars}")


def _as_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _in_range(field: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(field, f"{value} is out of range [{lo}, {hi}]")
    return float(value)
