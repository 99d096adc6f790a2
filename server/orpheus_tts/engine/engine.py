"""The engine: one thread that owns the model and loops, and an asyncio-facing front.

Each loop iteration ends cancelled and timed-out sessions, admits queued ones into free
slots, queues a prefill of new prompts (a bounded number of tokens) and one batched decode
step for up to `max_batch_size` sessions, then handles the ids a step sampled: it feeds them
to each session's frame accumulator and queues the decode of the audio frames that are due
in batched SNAC calls. With `scheduler.overlap_steps` those ids are the previous iteration's,
so the host does this work while the GPU runs the step just queued and never waits for it.
On a GPU the SNAC calls run on their own stream beside the next forward, and their audio is
sent while a forward runs. Results travel to the caller's event loop through
`call_soon_threadsafe`; nothing on the asyncio side ever touches a tensor.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import torch
from tokenizers import Tokenizer

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.codec.streaming import PendingAudio, launch_windows
from orpheus_tts.config import ServerConfig
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.observer import EngineObserver
from orpheus_tts.engine.runner import LaunchedStep, ModelRunner
from orpheus_tts.engine.sampler import Sampler
from orpheus_tts.engine.scheduler import Scheduler
from orpheus_tts.engine.session import AudioChunk, Outcome, Piece, Session, SessionEnd, SessionState
from orpheus_tts.engine.step_cost import StepCost
from orpheus_tts.engine.stream import SpeechStream
from orpheus_tts.model.fp8 import fp8_supported, quantize_to_fp8
from orpheus_tts.model.loader import compile_model, load_model
from orpheus_tts.model.tokenizer import load_tokenizer
from orpheus_tts.requests import RequestError, SpeechRequest
from orpheus_tts.text import split_for_speech

log = logging.getLogger("orpheus_tts.engine")

_IDLE_WAIT_S = 0.05  # how often an idle loop still checks pending timeouts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


@dataclass
class EngineTimings:
    """Where the engine thread's time went, cumulative seconds (benchmarks read differences);
    the parts are disjoint.

    prefill/decode: waiting for a forward's sampled ids; snac_wait: waiting for audio the GPU
    had not finished decoding; snac_launch: planning and queueing audio decodes; host:
    everything else in a step (scheduling, queueing forwards, bookkeeping, sending audio to
    the sessions' receivers)."""

    steps: int = 0
    step_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    snac_launch_s: float = 0.0
    snac_wait_s: float = 0.0

    @property
    def host_s(self) -> float:
        return self.step_s - self.prefill_s - self.decode_s - self.snac_launch_s - self.snac_wait_s


@dataclass
class EngineStats:
    """The seed's stats: scheduler totals, cache use, tokens and batches."""

    total_sessions: int
    completed_sessions: int
    rejected_sessions: int
    active_sessions: int
    pending_sessions: int
    max_concurrent: int
    used_slots: int
    free_slots: int
    total_tokens: int
    total_batches: int


class Engine:
    def __init__(self, config: ServerConfig, model, tokenizer: Tokenizer, codec: SnacCodec,
                 observer: EngineObserver | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.codec = codec
        self.observer = observer or EngineObserver()
        sched = config.scheduler
        cache_dtype = model.output.weight.dtype if config.model.kv_cache_dtype == "auto" \
            else resolve_dtype(config.model.kv_cache_dtype, model.output.weight.device)
        args = model.args
        self.kv_cache = KVCache(args.n_layers, sched.max_concurrent_sessions, args.n_kv_heads,
                                sched.max_context_tokens, args.head_dim, cache_dtype, model.output.weight.device)
        self.sampler = Sampler(model, sched.max_concurrent_sessions + 1, constrained=config.sampling.constrained)
        if config.model.compile and model.output.weight.device.type == "cuda":
            self.sampler.compile()
        self.runner = ModelRunner(model, self.kv_cache, self.sampler, sched.max_batch_size, config.model.cuda_graphs)
        if config.model.cuda_graphs:
            if config.codec.compile:
                codec.compile()
            codec.enable_graphs(config.codec.window_frames,
                                min(sched.max_concurrent_sessions, config.codec.graph_max_batch))
        self.scheduler = Scheduler(sched, self.kv_cache.allocator)
        self.timings = EngineTimings()
        self._step_estimate_s = 0.0  # recent step duration (moving average): how fast tokens come
        self.step_cost = StepCost()  # a step's time against its batch size, for the prefill wait
        # Audio decodes queued by the last step (and the sessions whose piece ended with it).
        self._audio_stream = torch.cuda.Stream(codec.device) if codec.device.type == "cuda" else None
        self._pending_audio: PendingAudio | None = None
        self._pending_chunks: list[tuple[Session, int, int, int]] = []  # session, first frame, frames, piece
        self._pending_ended: list[Session] = []
        # With scheduler.overlap_steps: the forwards queued by the last step, read during the next.
        self._in_flight: list[tuple[LaunchedStep, str]] = []
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.ready = False

    @classmethod
    def from_config(cls, config: ServerConfig, observer: EngineObserver | None = None) -> "Engine":
        device = resolve_device(config.model.device)
        dtype = resolve_dtype(config.model.dtype, device)
        model = load_model(config.model.path, device, dtype, config.scheduler.max_context_tokens, config.model.seed)
        quantization = config.model.quantization
        if quantization == "fp8" and not fp8_supported(device):
            raise ValueError(f"model.quantization=fp8 needs a GPU with FP8 (sm_89 or newer); {device} has none")
        if quantization == "fp8" or (quantization == "auto" and fp8_supported(device)):
            log.info("FP8 weights (%s)", quantize_to_fp8(model))
        if config.model.compile and device.type == "cuda":
            compile_model(model)
        codec_device = resolve_device(config.codec.device)
        codec_dtype = torch.float16 if config.codec.dtype == "auto" and codec_device.type == "cuda" \
            else resolve_dtype("float32" if config.codec.dtype == "auto" else config.codec.dtype, codec_device)
        codec = SnacCodec.load(config.codec.path, codec_device, noise=config.codec.noise, seed=config.codec.seed,
                               dtype=codec_dtype)
        return cls(config, model, load_tokenizer(config.model.path), codec, observer)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="orpheus-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.ready = False

    def warm_up(self, timeout_s: float = 600.0) -> None:
        """Run one short request end to end (first kernels, allocator), then mark the engine ready.

        What start-up allocated is then frozen out of Python's garbage collector: a full
        collection walks every object in the process, and one over a loaded torch process stops
        the engine thread (and every stream) far longer than a decode step."""
        done = threading.Event()
        request = self.make_request("Warming up.", voice=self.config.default_voice)
        session = self.submit(request, lambda event: done.set() if isinstance(event, SessionEnd) else None)
        if not done.wait(timeout_s):
            session.cancel()
            raise TimeoutError("engine warm-up did not finish")
        gc.collect()
        gc.freeze()
        self.ready = True

    # -- requests -------------------------------------------------------------------------
    def make_request(self, text: str, **fields) -> SpeechRequest:
        """Validate a request against this server's limits and sampling defaults."""
        fields.setdefault("voice", self.config.default_voice)
        return SpeechRequest.create(text, defaults=self.config.sampling,
                                    max_text_chars=self.config.active_profile.max_text_chars, **fields)

    def make_pieces(self, voice: str, text: str) -> list[Piece]:
        """Split text into pieces whose prompt plus speech budget fit one KV slot."""
        max_context = self.config.scheduler.max_context_tokens
        max_chars = orpheus.max_chars_for_tokens(max_context)
        while True:
            pieces = []
            for chunk in split_for_speech(text, max_chars):
                prompt = orpheus.prompt_ids(self.tokenizer.encode(orpheus.prompt_text(voice, chunk)).ids)
                budget = orpheus.audio_token_budget(chunk)
                if len(prompt) + budget > max_context:
                    break
                pieces.append(Piece(chunk, prompt, budget))
            else:
                return pieces
            if max_chars <= 8:
                raise RequestError("text", f"cannot fit any speech in max_context_tokens={max_context}")
            max_chars = int(max_chars * 0.8)  # the prompt did not fit beside the budget: smaller pieces

    def submit(self, request: SpeechRequest, emit: Callable[[AudioChunk | SessionEnd], None],
               streaming_text: bool = False) -> Session:
        """Queue a validated request; raises QueueFullError when the admission queue is full."""
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        session = Session(request=request, seed=seed, emit=emit)
        if streaming_text:
            session.open_text()
        pieces = self.make_pieces(request.voice, request.text) if request.text.strip() else []
        session.add_pieces(pieces, close=not streaming_text)
        self.scheduler.submit(session)
        self.wake()
        return session

    def add_text(self, session: Session, texts: list[str], close: bool) -> None:
        pieces = [p for text in texts for p in self.make_pieces(session.request.voice, text)]
        session.add_pieces(pieces, close)
        self.wake()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def open_stream(self, request: SpeechRequest, streaming_text: bool = False) -> SpeechStream:
        """Start a request and get its events on the running event loop (see SpeechStream)."""
        return SpeechStream(self, request, asyncio.get_running_loop(), streaming_text)

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk | SessionEnd]:
        """Audio chunks as they are ready, then one SessionEnd. Leaving early cancels the session."""
        stream = self.open_stream(request)
        async for event in stream.events():
            yield event

    def stats(self) -> EngineStats:
        c = self.scheduler.counters
        alloc = self.kv_cache.allocator
        return EngineStats(
            total_sessions=c.total_sessions, completed_sessions=c.completed_sessions,
            rejected_sessions=c.rejected_sessions, active_sessions=len(self.scheduler.active),
            pending_sessions=self.scheduler.pending_count, max_concurrent=alloc.n_slots,
            used_slots=alloc.used_count, free_slots=alloc.free_count,
            total_tokens=c.total_tokens, total_batches=c.total_batches,
        )

    # -- the loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stop:
                    break
            try:
                worked = self.step()
            except Exception:  # a bug in the loop itself: fail everyone rather than hang them
                log.exception("engine step failed; ending all sessions")
                for session in list(self.scheduler.active):
                    self._finish(session, Outcome.ERROR, "internal engine error")
                worked = True
            if not worked:
                with self._wake:
                    if not self._stop:
                        self._wake.wait(_IDLE_WAIT_S)
        for session in list(self.scheduler.active) + self.scheduler.drain_pending(lambda s: True):
            self._finish(session, Outcome.ERROR, "server shutting down")

    def step(self) -> bool:
        """One iteration; returns False when there was nothing to do."""
        self._end_cancelled_and_expired()
        for session in self.scheduler.admit():
            if session.cancelled:
                self._finish(session, Outcome.CANCELLED)
            elif session.metrics.queue_s is None:
                session.metrics.queue_s = time.monotonic() - session.created
        self._advance_text()
        started = time.perf_counter()
        launched = []
        prefill = self.scheduler.pick_prefill(self.runner.max_prefill_batch, self.step_cost.predict)
        if prefill:
            self.scheduler.counters.total_prefills += 1
            launched += self._launch(self.runner.launch_prefill, prefill, "prefill_s")
        decode = self.scheduler.pick_decode()  # just prefilled sessions too: their first ids are on the device
        if decode:
            launched += self._launch(self.runner.launch_decode, decode, "decode_s")
        if not prefill and not decode and not self._in_flight:
            if self._pending_audio is None:
                self.observer.on_idle(self.stats())
                return False
            self._deliver_audio()  # the last audio of sessions that just ended
            self.timings.steps += 1
            self.timings.step_s += time.perf_counter() - started
            return True
        previous, self._in_flight = self._in_flight, []
        if self.config.scheduler.overlap_steps:  # read the last step's ids while this one runs
            launched, self._in_flight = previous, launched
        else:
            launched = previous + launched
        self._complete(launched)
        seconds = time.perf_counter() - started
        rows = sum(len(step.sessions) for step, timing in launched if timing == "decode_s")  # the steps waited for
        if rows:
            self.step_cost.observe(rows, seconds)
        self.timings.steps += 1
        self.timings.step_s += seconds
        self._step_estimate_s += 0.1 * (seconds - self._step_estimate_s)
        if prefill or decode:
            self.observer.on_step(seconds, len(decode), len(prefill), self.stats())
        return True

    def _launch(self, fn, sessions: list[Session], timing: str) -> list[tuple[LaunchedStep, str]]:
        """Queue one batched forward; on failure end only the sessions that were in it."""
        try:
            launched = fn(sessions)
        except Exception as exc:
            log.exception("batched forward failed for %d sessions", len(sessions))
            for session in sessions:
                self._finish(session, Outcome.ERROR, f"inference failed: {exc}")
            return []
        for session in sessions:
            session.state = SessionState.DECODING  # after a prefill: its first id is on the way
            session.ids_requested += 1
        return [(launched, timing)]

    def _complete(self, launched: list[tuple[LaunchedStep, str]]) -> None:
        """Send the audio queued last time (its decode ran beside the forward now running), read
        the ids of `launched`, and queue the audio they make due."""
        self._deliver_audio()
        ended: list[Session] = []
        due: list[Session] = []
        for step, timing in launched:
            ended += self._take_tokens(step, timing)
            due += [s for s in step.sessions if s.state is SessionState.DECODING]
        for session in ended:  # not decoded again until its last audio is out
            if session.state is not SessionState.FINISHED:
                session.state = SessionState.DRAINING
        if due or ended:
            self._flush(list(dict.fromkeys(due)), ended)  # a session prefilled and decoded in one step is due once

    def _take_tokens(self, step: LaunchedStep, timing: str) -> list[Session]:
        """Wait for a step's ids and hand them to their sessions; returns those whose piece ended.

        A row whose session finished, or whose piece ended, after the step was queued (possible
        with overlap_steps) sampled a spare id: it is dropped, as if never asked for."""
        started = time.perf_counter()
        try:
            tokens = step.tokens()
        except Exception as exc:
            log.exception("batched forward failed for %d sessions", len(step.sessions))
            for session in step.sessions:
                self._finish(session, Outcome.ERROR, f"inference failed: {exc}")
            return []
        finally:
            setattr(self.timings, timing, getattr(self.timings, timing) + time.perf_counter() - started)
        ended = []
        max_context = self.config.scheduler.max_context_tokens
        for session, piece, token in zip(step.sessions, step.pieces, tokens):
            if session.state is not SessionState.DECODING or session.piece_index != piece:
                continue
            session.metrics.tokens += 1
            session.piece_tokens += 1
            self.scheduler.counters.total_tokens += 1
            if token != orpheus.END_OF_SPEECH:
                if session.accumulator.push(token):
                    session.tokens_since_flush += 1
                else:
                    session.metrics.invalid_tokens += 1
            if session.piece_done(token, max_context):
                ended.append(session)
        return ended

    def _flush(self, sessions: list[Session], ended: list[Session]) -> None:
        """Queue the decode of the audio that is due, batched across sessions.

        A stream goes frame by frame with no lookahead (as at its start) while its client holds
        less audio than waiting for a lookahead frame and a two-frame chunk would take at the
        current step time, plus a margin: under load the steps approach real time, and the
        bigger chunks would arrive after the audio before them has played. Sessions whose piece
        ended wait (DRAINING) until their last audio has been sent; one finished (cancelled)
        since its tokens came gets none decoded."""
        self._deliver_audio()  # normally sent already; never drop any
        started = time.perf_counter()
        sched = self.config.scheduler
        now = time.monotonic()
        lookahead_tokens = orpheus.TOKENS_PER_FRAME * self.config.codec.lookahead_frames
        tokens_to_bigger_chunk = sched.flush_every_n_tokens + lookahead_tokens
        decode_steps = 2 if sched.overlap_steps else 1  # steps from an id to its audio being sent
        lead_needed_s = (tokens_to_bigger_chunk + decode_steps) * self._step_estimate_s + sched.adaptive_margin_s
        ended_ids = {s.id for s in ended}
        jobs = []
        for session in sessions:
            if session.state is SessionState.FINISHED:
                continue
            final = session.id in ended_ids
            startup = (session.frames_emitted < sched.flush_startup_frames
                       or (sched.adaptive_chunks and session.playback_lead_s(now) < lead_needed_s))
            if session.in_ttfb_priority:
                threshold = sched.flush_first_n_tokens
            elif startup:
                threshold = orpheus.TOKENS_PER_FRAME
            else:
                threshold = sched.flush_every_n_tokens
            if final or session.tokens_since_flush >= threshold:
                window = session.accumulator.next_window(final, startup)
                if window is not None:
                    session.tokens_since_flush = 0
                    jobs.append((session, window))
        chunks = []
        for session, window in jobs:  # frame numbers within the whole stream (all pieces)
            frames = window.emit_to - window.emit_from
            chunks.append((session, session.frames_emitted, frames, session.piece_index))
            session.frames_emitted += frames
        self._pending_ended = ended
        try:
            self._pending_audio = launch_windows(self.codec, [(s.accumulator, w) for s, w in jobs], self._audio_stream,
                                                 self.config.codec.graph_max_batch)
            self._pending_chunks = chunks
        except Exception as exc:
            log.exception("SNAC decode failed for %d sessions", len(jobs))
            self._pending_audio, self._pending_chunks = None, []
            for session, _ in jobs:
                self._finish(session, Outcome.ERROR, f"audio decoding failed: {exc}")
            self._end_pieces()
        self.timings.snac_launch_s += time.perf_counter() - started

    def _deliver_audio(self) -> None:
        """Send the audio queued by the last step, then move its ended pieces on."""
        pending, chunks = self._pending_audio, self._pending_chunks
        if pending is None:
            return
        self._pending_audio, self._pending_chunks = None, []
        started = time.perf_counter()
        try:
            audio = pending.samples()
        except Exception as exc:
            log.exception("SNAC decode failed for %d sessions", len(chunks))
            for session, *_ in chunks:
                self._finish(session, Outcome.ERROR, f"audio decoding failed: {exc}")
            audio = []
        self.timings.snac_wait_s += time.perf_counter() - started
        now = time.monotonic()
        for (session, first, frames, piece), samples in zip(chunks, audio):
            if session.state is SessionState.FINISHED:
                continue
            if session.metrics.ttfb_s is None:
                session.metrics.ttfb_s = now - session.created
                session.playback_started = now
                self.observer.on_first_audio(session.metrics.ttfb_s)
            session.frames_sent += frames
            self._emit(session, AudioChunk(samples, first, frames, piece))
        self._end_pieces()

    def _end_pieces(self) -> None:
        for session in self._pending_ended:
            if session.state is SessionState.DRAINING:
                session.state = SessionState.WAITING_TEXT
        self._pending_ended = []
        self._advance_text()

    def _advance_text(self) -> None:
        """Sessions between pieces start their next one, or finish once their text is complete."""
        codec = self.config.codec
        for session in list(self.scheduler.active):
            if session.state is SessionState.WAITING_TEXT:
                closed = session.take_incoming()
                started = session.start_next_piece(codec.context_frames, codec.lookahead_frames, codec.window_frames)
                if not started and closed:
                    self._finish(session, Outcome.OK)

    def _end_cancelled_and_expired(self) -> None:
        timeout = self.config.scheduler.session_timeout_s
        now = time.monotonic()

        def expired(s: Session) -> bool:
            return now - s.created > timeout

        for session in self.scheduler.drain_pending(lambda s: s.cancelled or expired(s)):
            self._finish(session, Outcome.CANCELLED if session.cancelled else Outcome.TIMEOUT,
                         None if session.cancelled else f"not started within session_timeout_s={timeout}")
        for session in list(self.scheduler.active):
            if session.cancelled:
                self._finish(session, Outcome.CANCELLED)
            elif expired(session):
                self._finish(session, Outcome.TIMEOUT, f"exceeded session_timeout_s={timeout}")

    def _emit(self, session: Session, event: AudioChunk | SessionEnd) -> None:
        try:
            session.emit(event)
        except Exception:  # the receiver is gone (closed event loop): stop spending work on it
            log.warning("session %d: receiver gone, cancelling", session.id)
            session.cancel()

    def _finish(self, session: Session, outcome: Outcome, error: str | None = None) -> None:
        if session.state is SessionState.FINISHED:
            return
        self.scheduler.release(session)
        m = session.metrics
        m.elapsed_s = time.monotonic() - session.created
        m.frames = session.frames_sent
        m.audio_s = m.frames * orpheus.FRAME_SECONDS
        m.pieces = session.piece_index + 1
        self.observer.on_session_end(outcome, m)
        self._emit(session, SessionEnd(outcome, m, error))
