"""The engine end to end on CPU with the demo model: concurrency, slots, cancellation, limits."""

import asyncio
import gc
import time
import weakref

import numpy as np
import pytest

from orpheus_tts import orpheus
from orpheus_tts.engine.engine import Engine
from orpheus_tts.errors import QueueFullError
from orpheus_tts.engine.session import AudioChunk, Outcome, SessionEnd
from orpheus_tts.errors import RequestError

from server_testkit import small_config, teach_to_stop


def make_engine(**overrides) -> Engine:
    return Engine.from_config(small_config(**overrides)).start()


@pytest.fixture
def engine():
    eng = make_engine(**{"scheduler.max_concurrent_sessions": 16, "scheduler.max_batch_size": 16})
    yield eng
    eng.stop()


async def collect(engine, request):
    chunks, end = [], None
    async for event in engine.synthesize(request):
        if isinstance(event, AudioChunk):
            chunks.append(event)
        else:
            end = event
    return chunks, end


async def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_one_request_streams_whole_frames_and_reports_metrics(engine):
    chunks, end = await collect(engine, engine.make_request("Hello there.", seed=1))
    assert end.outcome is Outcome.OK
    samples = sum(len(c.samples) for c in chunks)
    assert samples > 0 and samples % orpheus.SAMPLES_PER_FRAME == 0
    assert end.metrics.frames * orpheus.SAMPLES_PER_FRAME == samples
    # The first chunks go out one frame at a time (start-up), then they grow.
    assert [c.frames for c in chunks[:4]] == [1, 1, 1, 1] and max(c.frames for c in chunks) == 2
    assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    assert end.metrics.ttfb_s is not None and end.metrics.tokens >= end.metrics.frames * 7
    assert end.metrics.audio_s == pytest.approx(end.metrics.frames * orpheus.FRAME_SECONDS)


async def test_sixteen_concurrent_sessions_all_finish_and_free_every_slot(engine):
    texts = [f"Session number {i} says hello." for i in range(16)]
    results = await asyncio.gather(*(collect(engine, engine.make_request(t, seed=i)) for i, t in enumerate(texts)))
    for chunks, end in results:
        assert end.outcome is Outcome.OK
        assert sum(len(c.samples) for c in chunks) == end.metrics.frames * orpheus.SAMPLES_PER_FRAME > 0
    stats = engine.stats()
    assert stats.free_slots == 16 and stats.used_slots == 0 and stats.active_sessions == 0
    assert stats.completed_sessions == 16 and stats.pending_sessions == 0
    # Batching happened: far fewer decode steps than tokens.
    assert stats.total_batches < stats.total_tokens / 4


async def test_cancelled_session_frees_its_slot_within_one_step(engine):
    stream = engine.open_stream(engine.make_request("A long sentence to be cut short by the client.", seed=2))
    events = stream.events()
    first = await events.__anext__()
    assert isinstance(first, AudioChunk)
    assert engine.stats().used_slots == 1
    batches_at_cancel = engine.stats().total_batches
    await events.aclose()  # the client goes away
    await wait_until(lambda: engine.stats().used_slots == 0)
    assert engine.stats().total_batches - batches_at_cancel <= 1


async def test_cancelled_session_reports_cancelled(engine):
    stream = engine.open_stream(engine.make_request("Cancel me please.", seed=3))
    stream.cancel()
    events = [e async for e in stream.events()]
    assert isinstance(events[-1], SessionEnd) and events[-1].outcome is Outcome.CANCELLED


async def test_same_seed_gives_the_same_audio(engine):
    a, _ = await collect(engine, engine.make_request("Repeat after me.", seed=9))
    b, _ = await collect(engine, engine.make_request("Repeat after me.", seed=9))
    np.testing.assert_array_equal(np.concatenate([c.samples for c in a]), np.concatenate([c.samples for c in b]))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"text": "   "}, "text"),
        ({"text": ""}, "text"),
        ({"text": "x" * 5001}, "text"),
        ({"voice": "bob"}, "voice"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.9}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"format": "ogg-vorbis"}, "format"),
        ({"ignore_end_of_speech": "yes"}, "ignore_end_of_speech"),
    ],
)
async def test_bad_request_is_refused_before_taking_a_slot(engine, fields, field):
    fields = {"text": "Fine text.", **fields}
    text = fields.pop("text")
    with pytest.raises(RequestError) as err:
        engine.make_request(text, **fields)
    assert err.value.field == field
    assert engine.stats().total_sessions == 0 and engine.stats().used_slots == 0


async def test_full_admission_queue_refuses_new_requests_and_serves_the_rest():
    eng = make_engine(**{"scheduler.max_concurrent_sessions": 1, "scheduler.max_pending_sessions": 1})
    try:
        first = eng.open_stream(eng.make_request("First in the pool.", seed=1))
        await wait_until(lambda: eng.stats().used_slots == 1)
        second = eng.open_stream(eng.make_request("Second waits in the queue.", seed=2))
        with pytest.raises(QueueFullError):
            eng.open_stream(eng.make_request("Third is refused.", seed=3))
        assert eng.stats().rejected_sessions == 1
        for stream in (first, second):
            events = [e async for e in stream.events()]
            assert events[-1].outcome is Outcome.OK
    finally:
        eng.stop()


async def test_session_past_its_timeout_ends_and_frees_its_slot():
    eng = make_engine(**{"scheduler.session_timeout_s": 0.3})
    try:
        request = eng.make_request("This text takes longer than the timeout to speak. " * 4, seed=5)
        other = eng.make_request("Short.", seed=6)
        (_, slow_end), (_, fast_end) = await asyncio.gather(collect(eng, request), collect(eng, other))
        assert slow_end.outcome is Outcome.TIMEOUT and "session_timeout_s" in slow_end.error
        assert fast_end.outcome in (Outcome.OK, Outcome.TIMEOUT)
        assert eng.stats().used_slots == 0
    finally:
        eng.stop()


async def test_long_text_is_spoken_piece_by_piece_in_one_stream():
    eng = make_engine(**{"scheduler.max_context_tokens": 512})
    try:
        sentences = [f"Sentence {i} is here." for i in range(6)]
        pieces = eng.make_pieces("tara", " ".join(sentences))
        assert [p.text for p in pieces] == sentences
        assert all(len(p.prompt) + p.budget <= 512 for p in pieces)
        chunks, end = await collect(eng, eng.make_request(" ".join(sentences), seed=4))
        assert end.outcome is Outcome.OK and end.metrics.pieces == len(pieces)
        assert sorted({c.piece for c in chunks}) == list(range(len(pieces)))
        assert sum(len(c.samples) for c in chunks) == end.metrics.frames * orpheus.SAMPLES_PER_FRAME
    finally:
        eng.stop()


async def test_streamed_text_is_spoken_before_it_is_complete(engine):
    stream = engine.open_stream(engine.make_request("", allow_empty_text=True, seed=7), streaming_text=True)
    stream.add_text("The first sentence is ready. ")
    events = stream.events()
    first = await asyncio.wait_for(events.__anext__(), timeout=30)
    assert isinstance(first, AudioChunk) and first.piece == 0
    stream.add_text("And here is the last one", final=True)
    rest = [e async for e in events]
    assert rest[-1].outcome is Outcome.OK and rest[-1].metrics.pieces == 2


async def test_unconstrained_sampling_still_streams_only_valid_frames():
    eng = make_engine(**{"sampling.constrained": False})
    try:
        chunks, end = await collect(eng, eng.make_request("Free sampling.", seed=8))
        assert end.outcome is Outcome.OK
        # Random weights put most mass on text ids: those are skipped and counted, never decoded.
        assert end.metrics.invalid_tokens > 0
        assert sum(len(c.samples) for c in chunks) == end.metrics.frames * orpheus.SAMPLES_PER_FRAME
    finally:
        eng.stop()


async def test_stopping_the_engine_ends_sessions_in_flight(engine):
    stream = engine.open_stream(engine.make_request("Interrupted by shutdown.", seed=1))
    await asyncio.to_thread(engine.stop)
    events = [e async for e in stream.events()]
    assert events[-1].outcome in (Outcome.OK, Outcome.ERROR)


async def test_prompts_that_wait_to_share_a_prefill_are_all_served():
    """scheduler.prefill_wait_ms: prompts arriving while a stream decodes share prefills, and
    every session still finishes."""
    engine = make_engine(**{"scheduler.prefill_wait_ms": 30.0, "scheduler.prefill_wait_min_load": 0.0,
                            "scheduler.max_concurrent_sessions": 6,
                            "scheduler.max_batch_size": 6})
    try:
        first = asyncio.create_task(collect(engine, engine.make_request("The first voice speaks.", seed=0)))
        await wait_until(lambda: engine.scheduler.counters.total_tokens > 0)
        later = []
        for i in range(1, 6):
            later.append(asyncio.create_task(collect(engine, engine.make_request(f"Voice {i} joins.", seed=i))))
            await asyncio.sleep(0.005)
        results = await asyncio.gather(first, *later)
        assert all(end.outcome is Outcome.OK and chunks for chunks, end in results)
        assert engine.scheduler.counters.total_prefills < 6
    finally:
        engine.stop()


async def test_a_finished_session_is_freed_without_the_garbage_collector(engine):
    """No reference cycle keeps a session and its stream alive: under load, the full collections
    such garbage needs stopped every stream for 50-170 ms on an H100."""
    gc.disable()
    try:
        stream = engine.open_stream(engine.make_request("Freed at once.", seed=1))
        session, stream_ref = weakref.ref(stream.session), weakref.ref(stream)
        events = [event async for event in stream.events()]
        assert isinstance(events[-1], SessionEnd) and events[-1].outcome is Outcome.OK
        del stream, events
        await wait_until(lambda: session() is None and stream_ref() is None, timeout=5.0)
    finally:
        gc.enable()


async def test_step_timings_account_for_every_step(engine):
    """The breakdown benchmarks report: forward, audio decode, and the host's share of each step."""
    before = engine.timings.steps
    chunks, end = await collect(engine, engine.make_request("Timing this.", seed=3))
    assert end.outcome is Outcome.OK and chunks
    t = engine.timings
    assert t.steps - before >= end.metrics.tokens  # one decode (or prefill) step per token at least
    assert t.decode_s > 0 and t.prefill_s > 0 and t.snac_launch_s > 0 and t.snac_wait_s >= 0
    assert 0 <= t.host_s < t.step_s
    assert t.prefill_s + t.decode_s + t.snac_launch_s + t.snac_wait_s <= t.step_s
    # what admission projects with: the decode steps' plane and each prefill's time for its tokens
    assert engine.step_cost.predict(1, 10) > 0 and engine.step_cost.tokens_per_row() > 0
    assert engine.runner.prefill_cost.predict(10) > 0


def _submit_by_hand(text: str, seed: int, **overrides):
    """An engine whose steps the test drives (no engine thread), with one session submitted."""
    engine = Engine.from_config(small_config(**overrides))
    events = []
    return engine, engine.submit(engine.make_request(text, seed=seed), events.append), events


def _cancel_when(engine, session, events, ready):
    """Step until `ready()`, cancel, take one more step; returns the session's end and the
    frames its receiver got."""
    while not ready():
        assert engine.step()
    session.cancel()
    engine.step()
    end = events[-1]
    assert isinstance(end, SessionEnd) and end.outcome is Outcome.CANCELLED
    return end, sum(e.frames for e in events if isinstance(e, AudioChunk))


def test_a_session_cancelled_while_its_audio_is_decoding_reports_only_the_frames_it_was_sent():
    """Audio queued by one step is sent during the next; a cancel in between drops that chunk,
    and the session's metrics count only what the receiver got. Steps are driven by hand."""
    engine, session, events = _submit_by_hand("Cut me off mid-sentence, please.", 4)
    end, received = _cancel_when(engine, session, events,
                                 lambda: session.frames_emitted > session.frames_sent)  # a chunk is queued
    assert end.metrics.frames == received
    assert session.frames_emitted > received  # the queued chunk was never sent
    engine.step()  # the dropped chunk's decode completes; nothing more reaches the receiver
    assert events[-1] is end


def _stream_by_hand(clock_shift_s: float, adaptive: bool, seed: int = 5, margin_s: float = 0.1) -> list:
    """One stream with steps driven by hand; once its first audio is out, its client's play
    clock is moved: as if it had started playing a minute later (it holds a minute of audio,
    shift > 0) or a minute earlier (it ran dry long ago, shift < 0)."""
    engine, session, events = _submit_by_hand("A sentence long enough to stream many chunks.", seed,
                                              **{"scheduler.adaptive_chunks": adaptive,
                                                 "scheduler.adaptive_margin_s": margin_s})
    while session.playback_started is None:
        assert engine.step()
    session.playback_started += clock_shift_s
    while not (events and isinstance(events[-1], SessionEnd)):
        engine.step()
    return events


@pytest.mark.parametrize("clock_shift_s, adaptive, margin_s, chunk_frames",
                         [(+60.0, True, 0.1, {2}), (-60.0, True, 0.1, {1}), (-60.0, False, 0.1, {2}),
                          (+60.0, True, 120.0, {1})])
def test_chunks_grow_only_while_the_client_holds_enough_audio(clock_shift_s, adaptive, margin_s, chunk_frames):
    """After start-up, two-frame chunks (with a lookahead frame held back) while the client is
    far ahead; one frame at a time, nothing held back, while it is about to run dry (unless
    adaptive chunks are off) or would hold less than the margin when a bigger chunk came."""
    events = _stream_by_hand(clock_shift_s, adaptive, margin_s=margin_s)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    # After start-up; the first bigger chunk holds a frame back, and the last one emits the tail.
    after_startup = chunks[small_config().scheduler.flush_startup_frames + 1:-1]
    assert len(after_startup) >= 3
    assert {c.frames for c in after_startup} == chunk_frames
    assert events[-1].metrics.frames == sum(c.frames for c in chunks)


def test_adaptive_chunks_change_only_the_joins_not_the_speech():
    """The same seed streamed with every join adapted (frame by frame) and with none: the same
    tokens and frames, the same start-up audio, and samples elsewhere differing only where a
    frame was decoded without its lookahead frame (as in the start-up schedule, whose cost
    test_streaming_codec measures)."""
    ahead, dry = _stream_by_hand(+60.0, True), _stream_by_hand(-60.0, True)
    assert ahead[-1].metrics.tokens == dry[-1].metrics.tokens and ahead[-1].metrics.frames == dry[-1].metrics.frames
    first, second = [np.concatenate([e.samples for e in ev if isinstance(e, AudioChunk)]) for ev in (ahead, dry)]
    startup = small_config().scheduler.flush_startup_frames * orpheus.SAMPLES_PER_FRAME
    assert first.shape == second.shape
    np.testing.assert_array_equal(first[:startup - orpheus.SAMPLES_PER_FRAME], second[:startup - orpheus.SAMPLES_PER_FRAME])
    snr_db = 10 * np.log10(np.sum(first**2) / np.sum((first - second) ** 2))
    assert snr_db > 20, snr_db  # 23.6 dB measured with the demo model's random codec, seeds 5-7


async def test_overlapped_steps_send_the_same_audio_and_free_every_slot():
    """scheduler.overlap_steps moves when ids are read, nothing else: with end-of-speech
    (whose spare id in flight is dropped) and several pieces per session (each restarting its
    slot's state), the same chunks, samples and metrics as reading every step at once, and
    every session ends cleanly. Samples match to float rounding: pieces start a step apart in
    the two modes, so SNAC batches other windows beside a session's."""
    texts = [f"Voice {i} overlaps the next step. " * 3 for i in range(6)]
    results = {}
    for overlap in (False, True):
        engine = Engine.from_config(small_config(**{
            "scheduler.overlap_steps": overlap, "scheduler.max_concurrent_sessions": 6,
            "scheduler.max_batch_size": 6, "scheduler.max_context_tokens": 256}))
        teach_to_stop(engine.runner.model)
        engine.start()
        results[overlap] = await asyncio.gather(*(collect(engine, engine.make_request(t, seed=i))
                                                  for i, t in enumerate(texts)))
        stats = engine.stats()
        engine.stop()
        assert stats.free_slots == 6 and stats.active_sessions == 0 and stats.completed_sessions == 6
    budgets = [sum(p.budget for p in engine.make_pieces(engine.config.default_voice, t)) for t in texts]
    pieces = set()
    for (chunks, end), (chunks_overlap, end_overlap), budget in zip(results[False], results[True], budgets):
        assert end.outcome is end_overlap.outcome is Outcome.OK
        assert [(c.first_frame, c.frames, c.piece) for c in chunks] == \
            [(c.first_frame, c.frames, c.piece) for c in chunks_overlap]
        np.testing.assert_allclose(np.concatenate([c.samples for c in chunks]),
                                   np.concatenate([c.samples for c in chunks_overlap]), rtol=0, atol=1e-5)
        assert end.metrics.frames == end_overlap.metrics.frames and end.metrics.tokens == end_overlap.metrics.tokens
        pieces.add(end.metrics.pieces)
        assert end.metrics.tokens < budget  # end-of-speech, not the budget, ended pieces
    assert max(pieces) > 1


def test_with_overlapped_steps_a_cancel_drops_the_id_in_flight():
    """A cancel while a step for the session is queued but not read: that id is dropped, the
    end counts only the ids read and the frames sent, and later steps send nothing more."""
    engine, session, events = _submit_by_hand("Cut me off mid-sentence, please.", 4,
                                              **{"scheduler.overlap_steps": True})
    end, received = _cancel_when(engine, session, events,
                                 lambda: session.frames_sent and session.ids_requested > session.piece_tokens)
    assert end.metrics.frames == received
    assert end.metrics.tokens == session.piece_tokens < session.ids_requested
    assert engine.stats().free_slots == engine.config.scheduler.max_concurrent_sessions
    while engine.step():
        pass
    assert events[-1] is end
