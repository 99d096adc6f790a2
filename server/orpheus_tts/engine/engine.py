"""The engine: one thread that owns the model and loops, and an asyncio-facing front.

Each step is schedule -> run -> take the outputs, as in nano-vllm and vLLM's engine core:

1. the scheduler picks the cancelled and timed-out sessions (the engine ends them), admits
   queued ones into free slots and starts their next text piece;
2. the runner queues a prefill of new prompts (a bounded number of tokens) and one batched
   decode step for up to `max_batch_size` sessions;
3. the audio the last step queued is sent, the scheduler takes the ids a step sampled, and
   the audio they make due is queued as batched SNAC decodes (`audio_out`).

With `scheduler.overlap_steps` the ids of step 3 are the previous step's, so the host does this
work while the GPU runs the step just queued and never waits for it. On a GPU the SNAC calls run
on their own stream beside the next forward, and their audio is sent while a forward runs.
Results travel to the caller's event loop through `call_soon_threadsafe`; nothing on the
asyncio side ever touches a tensor.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import threading
import time
from typing import AsyncIterator, Callable

from tokenizers import Tokenizer

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.config import ServerConfig
from orpheus_tts.engine.adapters import AdapterRegistry, check_adapter
from orpheus_tts.engine.audio_out import AudioDelivery, AudioPipeline, ChunkPolicy
from orpheus_tts.engine.capacity import Admission
from orpheus_tts.engine.cuda_graphs import codec_batch_buckets
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.loading import kv_cache_dtype, load_parts, server_voices
from orpheus_tts.engine.observer import EngineObserver, EngineStats, EngineTimings
from orpheus_tts.engine.pieces import PieceMaker
from orpheus_tts.engine.runner import LaunchedStep, ModelRunner
from orpheus_tts.engine.sampler import NON_FINITE, Sampler
from orpheus_tts.engine.scheduler import Scheduler
from orpheus_tts.engine.startup import StartupPhases
from orpheus_tts.engine.session import AudioChunk, Outcome, Piece, Session, SessionEnd, SessionState
from orpheus_tts.engine.step_cost import StepCost, seed_from_graphs
from orpheus_tts.engine.stream import SpeechStream
from orpheus_tts.requests import SpeechRequest

log = logging.getLogger("orpheus_tts.engine")

_IDLE_WAIT_S = 0.05  # how often an idle loop still checks pending timeouts


class Engine:
    def __init__(self, config: ServerConfig, model, tokenizer: Tokenizer, codec: SnacCodec,
                 observer: EngineObserver | None = None, phases: StartupPhases | None = None):
        self.config = config
        self.voices = server_voices(config)  # every voice a request may name, with its language and adapter
        self.phases = phases or StartupPhases(observer)
        self.tokenizer = tokenizer
        self.codec = codec
        self.observer = observer or EngineObserver()
        sched = config.scheduler
        args, device = model.args, model.output.weight.device
        self.kv_cache = KVCache(args.n_layers, sched.max_concurrent_sessions, args.n_kv_heads,
                                sched.max_context_tokens, args.head_dim, kv_cache_dtype(config, model), device)
        self.sampler = Sampler(model, sched.max_concurrent_sessions + 1, constrained=config.sampling.constrained)
        # LoRA adapters attach to the model before its graphs are captured
        self.adapters = AdapterRegistry.attach(config.adapters, model) if config.adapters.dir else None
        with self.phases.phase("graphs"):  # compiling (or loading compiled code) happens at capture
            if config.model.compile and device.type == "cuda":
                self.sampler.compile()
            self.runner = ModelRunner(model, self.kv_cache, self.sampler, sched.max_batch_size,
                                      config.model.cuda_graphs)
        with self.phases.phase("codec_graphs"):
            if config.model.cuda_graphs:
                if config.codec.compile:
                    codec.compile()
                codec.enable_graphs(config.codec.window_frames,
                                    codec_batch_buckets(sched.max_concurrent_sessions, config.codec.graph_max_batch))
        self.piece_maker = PieceMaker(tokenizer, sched.max_context_tokens)
        self.scheduler = Scheduler(sched, self.kv_cache.allocator, config.codec)
        self.timings = EngineTimings()
        self.step_cost = StepCost()  # a step's time against its rows and contexts: prefill wait, admission
        self.admission = Admission(sched, self.step_cost, self.kv_cache.allocator.n_slots, self.runner.prefill_cost)
        self._step_estimate_s = 0.0  # recent step duration (moving average): how fast tokens come
        self.chunk_policy = ChunkPolicy(sched, config.codec.lookahead_frames)
        self.audio = AudioPipeline(codec, config.codec.graph_max_batch, self.timings)
        # With scheduler.overlap_steps: the forwards queued by the last step, read during the next.
        self._in_flight: list[tuple[LaunchedStep, str]] = []
        self._step_sessions: list[Session] | None = None  # the sessions the running step has in hand
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.ready = False

    @classmethod
    def from_config(cls, config: ServerConfig, observer: EngineObserver | None = None) -> "Engine":
        phases = StartupPhases(observer)
        parts = load_parts(config, phases, observer)
        return cls(config, parts.model, parts.tokenizer, parts.codec, observer, phases)

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
        if self.adapters is not None:
            self.adapters.close()
        self.ready = False

    def warm_up(self, timeout_s: float = 600.0) -> None:
        """Run one short request end to end (first kernels, allocator), then mark the engine ready.

        What start-up allocated is then frozen out of Python's garbage collector: a full
        collection walks every object in the process, and one over a loaded torch process stops
        the engine thread (and every stream) far longer than a decode step."""
        done = threading.Event()
        with self.phases.phase("warm_up"):
            seed_from_graphs(self.step_cost, self.runner.graphs)
            request = self.make_request("Warming up.")
            session = self.submit(request, lambda event: done.set() if isinstance(event, SessionEnd) else None)
            if not done.wait(timeout_s):
                session.cancel()
                raise TimeoutError("engine warm-up did not finish")
            gc.collect()
            gc.freeze()
        log.info(self.phases.summary())
        self.ready = True

    # -- requests (any thread) --------------------------------------------------------------
    def make_request(self, text: str, *, voice: str | None = None, adapter: str | None = None,
                     **fields) -> SpeechRequest:
        """Validate a request against this server's limits and defaults (no voice, or an empty
        one, is the configured default voice; a voice mapped to an adapter runs on it)."""
        request = SpeechRequest.create(text, defaults=self.config.sampling, voice=voice or self.config.default_voice,
                                       adapter=adapter, voices=self.voices,
                                       max_text_chars=self.config.active_profile.max_text_chars, **fields)
        if request.adapter is not None:
            check_adapter(self.adapters, request.adapter)
        return request

    def make_pieces(self, voice: str, text: str) -> list[Piece]:
        return self.piece_maker.make(voice, text)

    def submit(self, request: SpeechRequest, emit: Callable[[AudioChunk | SessionEnd], None],
               streaming_text: bool = False) -> Session:
        """Queue a validated request; raises QueueFullError when the admission queue is full."""
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        session = Session(request=request, seed=seed, emit=emit)
        session.metrics.adapter = request.adapter
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
        c, alloc = self.scheduler.counters, self.kv_cache.allocator
        return EngineStats(total_sessions=c.total_sessions, completed_sessions=c.completed_sessions,
                           rejected_sessions=c.rejected_sessions, active_sessions=len(self.scheduler.active),
                           pending_sessions=self.scheduler.pending_count, max_concurrent=alloc.n_slots,
                           used_slots=alloc.used_count, free_slots=alloc.free_count, total_tokens=c.total_tokens,
                           total_batches=c.total_batches, refused_sessions=c.refused_sessions, **self.admission.figures())

    # -- the loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stop:
                    break
            try:
                worked = self.step()
            except Exception:  # a bug in the loop itself: end what the step had in hand, not hang it
                self._recover()
                worked = True
            if not worked:
                with self._wake:
                    if not self._stop:
                        self._wake.wait(_IDLE_WAIT_S)
        for session in list(self.scheduler.active) + self.scheduler.drain_pending(lambda s: True):
            self._finish(session, Outcome.ERROR, "server shutting down")

    def _recover(self) -> None:
        """After a step raised: end its sessions (all when it failed before choosing) and their queued audio."""
        hit = list(self.scheduler.active) if self._step_sessions is None else self._step_sessions
        log.exception("engine step failed; ending its %d sessions", len(hit))
        for session in hit:
            try:
                self._finish(session, Outcome.ERROR, "internal engine error")
            except Exception:
                log.exception("session %d: could not be ended cleanly", session.id)
        self.audio.abandon([])
        self._in_flight = []

    def step(self) -> bool:
        """One iteration; returns False when there was nothing to do."""
        self._step_sessions = None  # whom a failure of this step ends: before choosing, everyone
        self._schedule()
        started = time.perf_counter()
        prefill = self.scheduler.pick_prefill(self.runner.max_prefill_batch, self.step_cost.predict, self.admission.prefill_tokens)
        self._step_sessions = [*prefill, *self.audio.sessions, *(s for f, _ in self._in_flight for s in f.sessions)]
        launched = []
        if prefill:
            self.scheduler.counters.total_prefills += 1
            launched += self._launch(self.runner.launch_prefill, prefill, "prefill_s")
        decode = self.scheduler.pick_decode()  # just prefilled sessions too: their first ids are on the device
        self._step_sessions += decode
        if decode:
            launched += self._launch(self.runner.launch_decode, decode, "decode_s")
        if not prefill and not decode and not self._in_flight:
            if not self.audio.busy:
                self.observer.on_idle(self.stats())
                return False
            self._send_audio()  # the last audio of sessions that just ended
            self.timings.count_step(time.perf_counter() - started)
            return True
        previous, self._in_flight = self._in_flight, []
        if self.config.scheduler.overlap_steps:  # read the last step's ids while this one runs
            launched, self._in_flight = previous, launched
        else:
            launched = previous + launched
        self._send_audio()  # queued last step: its decode ran beside the forward now running
        self._queue_audio(*self._take_outputs(launched))
        self._record_step(started, launched, len(decode), len(prefill))
        return True

    def _schedule(self) -> None:
        """End what must end, admit queued sessions, start the pieces that are ready."""
        for session, outcome, error in self.scheduler.take_ended(time.monotonic()):
            self._finish(session, outcome, error)
        if self.scheduler.pending_count:
            self.admission.begin(self.scheduler.active)
        for session in self.scheduler.admit(self.admission.fits, self.adapters.place_for if self.adapters else None):
            if session.cancelled:
                self._finish(session, Outcome.CANCELLED)
            elif session.failure is not None:
                self._finish(session, Outcome.ERROR, session.failure)
            else:
                self.runner.set_adapter(session.slot, -1 if session.adapter_place is None else session.adapter_place)
                if session.metrics.queue_s is None:
                    session.metrics.queue_s = time.monotonic() - session.created
        self._start_pieces()

    def _start_pieces(self) -> None:
        for session in self.scheduler.start_pieces():
            self._finish(session, Outcome.OK)

    def _launch(self, fn, sessions: list[Session], timing: str) -> list[tuple[LaunchedStep, str]]:
        """Queue one batched forward; on failure end only the sessions that were in it."""
        try:
            launched = fn(sessions)
        except Exception as exc:
            log.exception("batched forward failed for %d sessions", len(sessions))
            for session in sessions:
                self._finish(session, Outcome.ERROR, f"inference failed: {exc}")
            return []
        self.scheduler.launched(sessions)
        return [(launched, timing)]

    def _take_outputs(self, launched: list[tuple[LaunchedStep, str]]) -> tuple[list[Session], list[Session]]:
        """Wait for each step's ids and hand them to the scheduler; returns the sessions with
        audio to plan (in row order, once each) and those whose piece ended."""
        ended: list[Session] = []
        rows: list[Session] = []
        for step, timing in launched:
            started = time.perf_counter()
            try:
                tokens = step.tokens()
            except Exception as exc:
                log.exception("batched forward failed for %d sessions", len(step.sessions))
                for session in step.sessions:
                    self._finish(session, Outcome.ERROR, f"inference failed: {exc}")
                continue
            finally:
                setattr(self.timings, timing, getattr(self.timings, timing) + time.perf_counter() - started)
            if NON_FINITE in tokens:
                self._end_non_finite(step, tokens)
            ended += self.scheduler.take_tokens(step.sessions, step.pieces, tokens)
            rows += step.sessions
        ending = set(ended)
        due = [s for s in dict.fromkeys(rows) if s.state is SessionState.DECODING or s in ending]
        return due, ended

    def _end_non_finite(self, step: LaunchedStep, tokens: list[int]) -> None:
        """End the sessions whose rows of `step` had non-finite logits: the server's fault (an
        error), not the caller's; the other rows go on. A row whose session has already moved on
        (a spare id of overlapped steps) is ignored, as `take_tokens` ignores it."""
        for session, piece, token in zip(step.sessions, step.pieces, tokens):
            if token == NON_FINITE and session.state is SessionState.DECODING and session.piece_index == piece:
                log.error("session %d: non-finite logits (NaN or infinity) at token %d of piece %d; ending it",
                          session.id, session.metrics.tokens, piece)
                self._finish(session, Outcome.ERROR, "inference failed: the model's logits were not finite")

    def _queue_audio(self, due: list[Session], ended: list[Session]) -> None:
        """Queue the decode of the audio that is due, batched across sessions; it is sent at the
        next step."""
        if not due and not ended:
            return
        started = time.perf_counter()
        jobs = self.chunk_policy.due_windows(due, ended, self._step_estimate_s, time.monotonic())
        try:
            self.audio.launch(jobs, ended)
        except Exception as exc:
            log.exception("SNAC decode failed for %d sessions", len(jobs))
            for session, _ in jobs:
                self._finish(session, Outcome.ERROR, f"audio decoding failed: {exc}")
            self._deliver(self.audio.abandon(ended))
        self.timings.snac_launch_s += time.perf_counter() - started

    def _send_audio(self) -> None:
        """Send the audio queued by the last step, then move its ended pieces on."""
        delivery = self.audio.collect()
        if delivery is not None:
            self._deliver(delivery)

    def _deliver(self, delivery: AudioDelivery) -> None:
        if delivery.error is not None:
            for chunk in delivery.chunks:
                self._finish(chunk.session, Outcome.ERROR, f"audio decoding failed: {delivery.error}")
        now = time.monotonic()
        for chunk, samples in zip(delivery.chunks, delivery.samples or []):
            session = chunk.session
            if session.state is SessionState.FINISHED:
                continue
            if session.metrics.ttfb_s is None:
                session.metrics.ttfb_s = now - session.created
                session.playback_started = now
                self.observer.on_first_audio(session.metrics.ttfb_s)
            session.frames_sent += chunk.frames
            self._emit(session, AudioChunk(samples, chunk.first_frame, chunk.frames, chunk.piece))
        self.scheduler.pieces_sent(delivery.ended)
        self._start_pieces()

    def _record_step(self, started: float, launched: list[tuple[LaunchedStep, str]], decode_rows: int,
                     prefill_rows: int) -> None:
        seconds = time.perf_counter() - started
        decoded = [step for step, timing in launched if timing == "decode_s"]  # the steps waited for
        rows = sum(len(step.sessions) for step in decoded)
        if rows:
            self.step_cost.observe(rows, seconds, sum(step.context_tokens for step in decoded))
        self.timings.count_step(seconds)
        self._step_estimate_s += 0.1 * (seconds - self._step_estimate_s)
        if prefill_rows or decode_rows:
            self.observer.on_step(seconds, decode_rows, prefill_rows, self.stats())

    def _emit(self, session: Session, event: AudioChunk | SessionEnd) -> None:
        try:
            session.emit(event)
        except Exception:  # the receiver is gone (closed event loop): stop spending work on it
            log.warning("session %d: receiver gone, cancelling", session.id)
            session.cancel()

    def _finish(self, session: Session, outcome: Outcome, error: str | None = None) -> None:
        if session.state is SessionState.FINISHED:
            return
        if session.adapter_place is not None and session.slot is not None:
            self.adapters.release(session.adapter_place)
        if outcome is Outcome.ERROR and session.slot is not None:
            self.kv_cache.clear_slot(session.slot)  # whatever failed may have left NaN for the slot's next session
        self.scheduler.release(session)
        m = session.metrics
        m.elapsed_s = time.monotonic() - session.created
        m.frames = session.frames_sent
        m.audio_s = m.frames * orpheus.FRAME_SECONDS
        m.pieces = session.piece_index + 1
        self.observer.on_session_end(outcome, m)
        self._emit(session, SessionEnd(outcome, m, error))
