"""The asyncio side of one session: events on the caller's loop, text in pieces, cancellation.

The engine thread hands events over with `call_soon_threadsafe`; the queue is unbounded
because the engine never waits on a slow reader (its audio is small next to its cost), and
a reader that goes away cancels the session instead.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from orpheus_tts.engine.scheduler import REFUSED_RETRY_AFTER_S
from orpheus_tts.engine.session import AudioChunk, Outcome, SessionEnd
from orpheus_tts.errors import AtCapacityError, RequestError
from orpheus_tts.requests import SpeechRequest, check_text_length, check_unicode
from orpheus_tts.text import SentenceBuffer

if TYPE_CHECKING:
    from orpheus_tts.engine.engine import Engine


class SessionFailure(RuntimeError):
    """The engine ended the session with an error before its first audio: the server failed, not the
    caller (INTERNAL / HTTP 500). The message says why; the door adds its request id."""


class SpeechStream:
    """One request in flight. With `streaming_text`, text arrives through `add_text`."""

    def __init__(self, engine: "Engine", request: SpeechRequest, loop: asyncio.AbstractEventLoop,
                 streaming_text: bool = False):
        self._engine = engine
        self._queue: asyncio.Queue[AudioChunk | SessionEnd] = asyncio.Queue()
        self._buffer = SentenceBuffer(max_chars=engine.config.active_profile.max_text_chars)
        self._chars = len(request.text)
        self._closed = not streaming_text
        self._first: AudioChunk | SessionEnd | None = None  # read by `started`, not yet by `events`
        put = self._queue.put_nowait  # not `self`: a session holding its stream would be a reference cycle,
        # garbage only a full collection frees (a 50-170 ms pause of every stream under load on an H100)
        self.session = engine.submit(request, lambda event: loop.call_soon_threadsafe(put, event),
                                     streaming_text=streaming_text)

    def add_text(self, text: str, final: bool = False) -> None:
        """Feed more text; whole sentences are spoken as soon as they are complete."""
        if self._closed:
            raise RequestError("text", "the text was already ended")
        check_unicode("text", text)
        self._chars += len(text)
        check_text_length(self._chars, self._engine.config.active_profile.max_text_chars, streamed=True)
        self._closed = final
        self._engine.add_text(self.session, self._buffer.add(text, final), close=final)

    def cancel(self) -> None:
        self.session.cancel()
        self._engine.wake()

    async def started(self) -> None:
        """Wait for the first event: audio, or the end. Raises AtCapacityError if the request was
        refused while queued, SessionFailure if the engine failed it, so a door can still answer
        with a status (HTTP 429, 500) rather than a body that stops; the event is kept for `events`."""
        if self._first is None:
            self._first = await self._queue.get()
        _raise_if_refused(self._first)
        if isinstance(self._first, SessionEnd) and self._first.outcome is Outcome.ERROR:
            raise SessionFailure(self._first.error or "the engine failed")

    async def events(self) -> AsyncIterator[AudioChunk | SessionEnd]:
        """Audio chunks in order, then exactly one SessionEnd; leaving early cancels the session.
        A request refused while queued raises AtCapacityError instead (it made no audio)."""
        ended = False
        try:
            while not ended:
                event, self._first = (self._first, None) if self._first is not None else (await self._queue.get(), None)
                _raise_if_refused(event)
                ended = isinstance(event, SessionEnd)
                yield event
        finally:
            if not ended:
                self.cancel()


def _raise_if_refused(event: AudioChunk | SessionEnd) -> None:
    if isinstance(event, SessionEnd) and event.outcome is Outcome.REFUSED:
        raise AtCapacityError(event.error or "server at capacity", REFUSED_RETRY_AFTER_S)
