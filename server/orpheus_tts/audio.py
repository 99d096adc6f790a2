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
