"""The speech streams the doors have open, so a shutdown whose grace runs out ends each one itself.

Every door opens its engine streams here. When `OrpheusServer.stop` has waited the whole grace,
`end_all` cancels what is left with a reason; each door then sees its session end and, because
`ending` is set, ends the stream the way its format allows (gRPC UNAVAILABLE, an SSE `error`
event, WebSocket close 1012, a raw audio body cut before its last chunk) and logs it as a shutdown
with the audio it did send, instead of having the connection torn down under it.
"""

from __future__ import annotations

import weakref

from orpheus_tts.engine import Engine, SpeechStream
from orpheus_tts.requests import SpeechRequest


class ShutdownCut(Exception):
    """A raw audio body ended by shutdown: the HTTP door closes the connection without the last
    chunk (the only signal a chunked body has) and without an error traceback."""


class OpenStreams:
    def __init__(self):
        self._streams: weakref.WeakSet[SpeechStream] = weakref.WeakSet()  # a finished door drops its stream
        self.ending: str | None = None  # why the streams left were ended, once `end_all` ran

    def open(self, engine: Engine, request: SpeechRequest, streaming_text: bool = False) -> SpeechStream:
        stream = engine.open_stream(request, streaming_text=streaming_text)
        self._streams.add(stream)
        return stream

    def end_all(self, reason: str) -> None:
        self.ending = reason
        for stream in list(self._streams):
            stream.cancel()  # a no-op for a finished session
