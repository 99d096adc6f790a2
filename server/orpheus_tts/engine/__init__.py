"""The engine's public front: what the API, the CLI and tools use. Everything else in
`orpheus_tts.engine` is its inside (scheduler, runner, sampler, cache, graphs, audio out)."""

from orpheus_tts.codec.joins import JoinSmoother
from orpheus_tts.engine.engine import Engine
from orpheus_tts.engine.loading import server_voices
from orpheus_tts.engine.observer import EngineObserver, EngineStats, EngineTimings
from orpheus_tts.engine.session import AudioChunk, Outcome, SessionEnd, SessionMetrics
from orpheus_tts.engine.stream import SessionFailure, SpeechStream

__all__ = ["AudioChunk", "Engine", "EngineObserver", "EngineStats", "EngineTimings", "JoinSmoother", "Outcome",
           "SessionEnd", "SessionFailure", "SessionMetrics", "SpeechStream", "server_voices"]
