"""Audio encodings: float samples to PCM s16le, and WAV framing (also for streaming)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from orpheus_tts import orpheus

STREAMING_WAV_SIZE = 0xFFFFFFFF  # "unknown length" in the RIFF and data sizes, accepted by players


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> little-endian signed 16-bit PCM."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int = orpheus.SAMPLE_RATE_HZ, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM WAV header; without `data_bytes`, the streaming form of unknown length."""
    if data_bytes is None:
        riff_size = data_size = STREAMING_WAV_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    byte_rate = sample_rate * channels * 2
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * 2, 16)
            + b"data" + struct.pack("<I", data_size))


def write_wav(path, pcm16: bytes, sample_rate: int = orpheus.SAMPLE_RATE_HZ) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm16)


def wav_bytes(pcm16: bytes, sample_rate: int = orpheus.SAMPLE_RATE_HZ) -> bytes:
    buffer = io.BytesIO()
    write_wav(buffer, pcm16, sample_rate)
    return buffer.getvalue()


# -- response encoders (HTTP and WebSocket) ----------------------------------------------------

# libsndfile's (format, subtype) for each compressed response format. MP3 needs libsndfile
# >= 1.1 and Opus >= 1.0.29; `encoded_formats` reports what the installed one supports.
_SNDFILE_FORMATS = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
MEDIA_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg; codecs=opus"}
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # libsndfile >= 1.2: pages flushed at least this often
_SFC_SET_BITRATE_MODE = 0x1305
_SF_BITRATE_MODE_CONSTANT = 0
_OGG_PAGE_LATENCY_MS = 20.0  # one Opus frame: a page leaves with every chunk we encode


def encoded_formats() -> tuple[str, ...]:
    """The compressed formats the installed libsndfile can write (none without soundfile)."""
    try:
        import soundfile
    except (ImportError, OSError):  # no package, or no libsndfile
        return ()
    formats = soundfile.available_formats()
    return tuple(name for name, (fmt, subtype) in _SNDFILE_FORMATS.items()
                 if fmt in formats and subtype in soundfile.available_subtypes(fmt))


class StreamEncoder:
    """Float samples in, encoded bytes out as soon as the format allows; `finish` ends the file."""

    cheap = False  # True: fast enough to run on the event loop

    def encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PcmEncoder(StreamEncoder):
    """PCM s16le; with `wav_header_first`, the streaming WAV header goes before the first samples."""

    cheap = True

    def __init__(self, wav_header_first: bool = False):
        self._header = wav_header() if wav_header_first else b""

    def encode(self, samples: np.ndarray) -> bytes:
        data, self._header = self._header + to_pcm16(samples), b""
        return data

    def finish(self) -> bytes:
        data, self._header = self._header, b""  # an empty stream is still a WAV file
        return data


class _AppendOnlySink:
    """A file object for libsndfile that hands written bytes on and never takes them back.

    Encoders that go back to patch a header at the end (FLAC's STREAMINFO) would rewrite bytes
    already sent; with `hold` the sink keeps everything until `finish` so the patch lands.
    Otherwise a rewrite of sent bytes is dropped: only MP3's VBR tag does that, and MP3 is
    written at a constant bitrate, which writes no such tag.
    """

    def __init__(self, hold: bool):
        self.hold = hold
        self._data = bytearray()
        self._sent = 0
        self._pos = 0

    def write(self, data) -> int:
        data = bytes(data)
        end = self._pos + len(data)
        if self._pos >= self._sent:
            self._data[self._pos - self._sent:end - self._sent] = data
        self._pos = end
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        size = self._sent + len(self._data)
        self._pos = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: size + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self, final: bool = False) -> bytes:
        if self.hold and not final:
            return b""
        data = bytes(self._data)
        self._sent += len(data)
        self._data.clear()
        return data


class SoundFileEncoder(StreamEncoder):
    """FLAC, MP3 (constant bitrate) or Ogg Opus through libsndfile.

    MP3 and Opus stream: each chunk's bytes leave as soon as the encoder emits them (an Ogg
    page every 20 ms of audio). A streamed MP3 has no gapless header, so decoders add the
    encoder delay (1105 samples at 24 kHz) in front and pad the last frame. FLAC is sent
    whole at the end, because its header holds the length and checksum; a FLAC without them
    is valid but not every reader (libsndfile among them) can read it.
    """

    def __init__(self, response_format: str):
        import soundfile
        from soundfile import _ffi, _snd

        fmt, subtype = _SNDFILE_FORMATS[response_format]
        self._sink = _AppendOnlySink(hold=response_format == "flac")
        self._file = soundfile.SoundFile(self._sink, "w", samplerate=orpheus.SAMPLE_RATE_HZ, channels=1,
                                         format=fmt, subtype=subtype)
        if response_format == "opus":
            latency = _ffi.new("double*", _OGG_PAGE_LATENCY_MS)
            _snd.sf_command(self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, _ffi.sizeof("double"))
        elif response_format == "mp3":
            mode = _ffi.new("int*", _SF_BITRATE_MODE_CONSTANT)
            _snd.sf_command(self._file._file, _SFC_SET_BITRATE_MODE, mode, _ffi.sizeof("int"))

    def encode(self, samples: np.ndarray) -> bytes:
        self._file.write(np.asarray(samples, dtype=np.float32))
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._file.closed:
            self._file.close()
        return self._sink.take(final=True)


def stream_encoder(response_format: str) -> StreamEncoder:
    if response_format in ("pcm", "wav"):
        return PcmEncoder(wav_header_first=response_format == "wav")
    return SoundFileEncoder(response_format)
