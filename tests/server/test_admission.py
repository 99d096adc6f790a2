"""Admission past capacity: the real-time capacity the step cost implies, the projection of the
admitted streams' whole remaining text that admission weighs, the scheduler keeping the admitted
streams within it, and a request that waited the queue's bound refused through every door (gRPC
RESOURCE_EXHAUSTED, HTTP 429, WebSocket 1013) with Retry-After, counted by reason."""

from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.config import CodecConfig, SamplingConfig, SchedulerConfig
from orpheus_tts.engine.capacity import (REALTIME_STEP_S, Admission, projected_period_s, realtime_capacity,
                                         token_period_s)
from orpheus_tts.engine.kv_cache import SlotAllocator
from orpheus_tts.engine.scheduler import Scheduler
from orpheus_tts.engine.session import Outcome, Piece, Session, SessionState
from orpheus_tts.engine.step_cost import StepCost
from orpheus_tts.requests import SpeechRequest


def linear_step(fixed_ms: float, per_row_ms: float):
    return lambda rows: (fixed_ms + per_row_ms * rows) / 1e3


# -- the capacity a step cost implies ---------------------------------------------------------

def test_capacity_is_the_most_streams_whose_ids_still_come_in_real_time():
    step = linear_step(2.0, 0.05)  # 2 ms + 0.05 ms per row: 10.36 ms (the budget) at 167 rows
    capacity = realtime_capacity(step, slots=512, max_batch=512, margin=0.15)
    assert capacity == 167
    assert token_period_s(capacity, 512, step) <= REALTIME_STEP_S * 0.85 < token_period_s(capacity + 1, 512, step)


def test_streams_beyond_one_batch_wait_a_step_each_turn():
    # Batches of 64 at 5.2 ms: 64 streams get an id every 5.2 ms, 65 every 10.4 ms, over the budget.
    assert realtime_capacity(linear_step(2.0, 0.05), slots=512, max_batch=64, margin=0.15) == 64
    # At 1.64 ms a batch, six turns of 64 fit in the budget: 384 streams, 385 would need seven.
    assert realtime_capacity(linear_step(1.0, 0.01), slots=512, max_batch=64, margin=0.15) == 384


def test_capacity_is_the_slots_until_a_step_is_measured_and_never_below_one():
    assert realtime_capacity(lambda rows: 0.0, slots=32, max_batch=16, margin=0.15) == 32
    assert realtime_capacity(linear_step(50.0, 1.0), slots=32, max_batch=16, margin=0.15) == 1
    assert realtime_capacity(linear_step(0.5, 0.0), slots=32, max_batch=32, margin=0.15) == 32


# -- the projection of the admitted streams ---------------------------------------------------

def test_the_projected_period_peaks_just_before_a_stream_ends():
    # 1 ms + 1 ms a row + 1 us a context token. Two streams: 100 tokens now with 400 ids to go,
    # and 10 tokens now with 50 to go. Now: 1 + 2 + 0.11 ms; just before the short one ends
    # (49 ids on): 1 + 2 + (149 + 59) us = 3.208 ms; after it one row, at most 1 + 1 + 0.499 ms.
    loads = np.array([[100, 400, 500], [10, 50, 60]], dtype=np.float64)
    assert projected_period_s(loads, 512, (1e-3, 1e-3, 1e-6)) == pytest.approx(3.208e-3)
    assert projected_period_s(loads[:1], 512, (1e-3, 1e-3, 1e-6)) == pytest.approx(2.499e-3)
    # a stream's context stops at its largest piece (a later piece starts over from its prompt)
    capped = np.array([[100, 400, 150]], dtype=np.float64)
    assert projected_period_s(capped, 512, (1e-3, 1e-4, 1e-6)) == pytest.approx(1e-3 + 1e-4 + 150e-6)
    # past one batch each stream waits a step a turn: 3 streams in batches of 2
    rows = np.array([[0, 10, 10]] * 3, dtype=np.float64)
    assert projected_period_s(rows, 2, (1e-3, 0.0, 0.0)) == pytest.approx(2e-3)


def _admission(fixed_s: float, per_row_s: float, per_token_s: float, **config) -> Admission:
    """An admission over a step cost fitted from steps of that plane (rows and contexts both varied)."""
    cost = StepCost()
    for rows in range(1, 200, 9):
        for tokens_per_row in (50, 400, 900):
            cost.observe(rows, fixed_s + per_row_s * rows + per_token_s * rows * tokens_per_row, rows * tokens_per_row)
    sched = SchedulerConfig(max_concurrent_sessions=512, max_batch_size=512, **config)
    return Admission(sched, cost, 512)


def _speaking(prompt: int, budget: int, spoken: int = 0, queued: int = 0) -> Session:
    """A session decoding a piece of `budget` ids (`spoken` of them so far), `queued` more pieces behind it."""
    session = _session()
    session.piece = Piece("x", [0] * prompt, budget)
    session.pieces.extend(Piece("y", [0] * prompt, budget) for _ in range(queued))
    session.state, session.ids_requested = SessionState.DECODING, spoken
    return session


def _queued(prompt: int, budget: int, pieces: int = 1) -> Session:
    session = _session()
    session.add_pieces([Piece("z", [0] * prompt, budget) for _ in range(pieces)], close=True)
    return session


def test_a_session_projects_its_whole_remaining_text():
    assert _queued(30, 700, pieces=3).projected_tokens() == (30, 2100, 730)
    assert _speaking(30, 700, spoken=200, queued=1).projected_tokens() == (230, 1200, 730)
    between = _speaking(30, 700, spoken=700, queued=1)
    between.state = SessionState.WAITING_TEXT  # its first piece is spoken: the next starts from its prompt
    assert between.projected_tokens() == (30, 700, 730)
    assert _session().projected_tokens() is None  # no text yet (streaming text)


def test_admission_refuses_a_stream_that_fits_now_but_not_once_the_admitted_ones_have_grown():
    # 2 ms + 10 us a row + 40 ns a context token (the budget is 10.36 ms). 200 streams that have just
    # begun a 1,400-id piece cost 2 + 2 + 0.3 ms now, but 2 + 2 + 11.5 ms at their end.
    admission = _admission(2e-3, 1e-5, 4e-8)
    young = [_speaking(32, 1400, spoken=5) for _ in range(200)]
    admission.begin(young)
    assert admission.cost.predict(201, 201 * 37) < REALTIME_STEP_S * 0.85  # judged by now, it would fit
    assert not admission.fits(_queued(32, 1400))
    # ...while beside 100 such streams there is room for short sentences, up to the projection's limit
    admission.begin(young[:100])
    short = [_queued(32, 140) for _ in range(400)]
    admitted = sum(admission.fits(s) for s in short)
    assert 300 < admitted < 400
    loads = np.array([s.projected_tokens() for s in young[:100] + short[:admitted]], dtype=np.float64)
    assert projected_period_s(loads, 512, admission.cost.coefficients()) <= REALTIME_STEP_S * 0.85
    one_more = np.concatenate((loads, loads[-1:]))  # and not one fewer than fit (the burst's bound is not the limit)
    assert projected_period_s(one_more, 512, admission.cost.coefficients()) > REALTIME_STEP_S * 0.85


def test_admission_always_takes_the_first_stream_and_everyone_with_slots_or_an_unknown_cost():
    admission = _admission(0.05, 0.0, 0.0)  # a step over the real-time budget alone
    admission.begin([])
    assert admission.fits(_queued(32, 1400)) and not admission.fits(_queued(32, 1400))
    unknown = Admission(SchedulerConfig(), StepCost(), 32)
    unknown.begin([_speaking(32, 1400)])
    assert unknown.fits(_queued(32, 1400))
    slots = _admission(0.05, 0.0, 0.0, admission="slots")
    slots.begin([_speaking(32, 1400)])
    assert slots.fits(_queued(32, 1400)) and slots.capacity() == 512


def test_the_capacity_figure_counts_streams_like_those_admitted_lately():
    admission = _admission(2e-3, 1e-5, 4e-8)
    admission.begin([])
    assert admission.fits(_queued(32, 1400))  # a life's mean context of 732 tokens
    per_stream = 1e-5 + 4e-8 * 732
    assert admission.capacity() == int((REALTIME_STEP_S * 0.85 - 2e-3) / per_stream)


def _playing(lead_s: float, now: float) -> Session:
    session = _speaking(32, 1400, spoken=100)
    session.playback_started = now - 1.0
    session.frames_emitted = round((1.0 + lead_s) / 0.08533)  # audio queued beyond what has played
    return session


def test_a_prefill_is_bounded_by_the_slack_or_the_thinnest_lead_of_a_playing_stream():
    admission = _admission(2e-3, 2e-5, 0.0)  # a decode step of 2 ms + 20 us a row
    for tokens in range(16, 2048, 64):
        admission.prefill_cost.observe(tokens, 1e-3 + 1e-5 * tokens)  # a prefill: 1 ms + 10 us a token
    now = 100.0
    assert admission.prefill_tokens([], now) is None  # nothing plays: nobody to stall
    # 300 streams with a second of audio in hand: the lead allows (1 s - a frame's 7 steps of 8 ms - 1 ms) / 10 us
    rich = [_playing(1.0, now) for _ in range(300)]
    step = 2e-3 + 2e-5 * 300
    lead = min(s.playback_lead_s(now) for s in rich)
    assert admission.prefill_tokens(rich, now) == int((lead - 7 * step - 1e-3) / 1e-5)
    admission.sched.prefill_guard_frames = 2  # a live setting: two frames' time kept
    assert admission.prefill_tokens(rich, now) == int((lead - 14 * step - 1e-3) / 1e-5)
    admission.sched.prefill_guard_frames = 0  # off: max_prefill_tokens alone
    assert admission.prefill_tokens(rich, now) is None
    admission.sched.prefill_guard_frames = 1
    # one young stream with 50 ms in hand: only the slack is left, 10.36 - 8 ms
    young = rich + [_playing(0.05, now)]
    step = 2e-3 + 2e-5 * 301
    assert admission.prefill_tokens(young, now) == int((REALTIME_STEP_S * 0.85 - step - 1e-3) / 1e-5)
    waiting = [_speaking(32, 1400)]  # decoding but not playing yet (before its first audio): no bound
    assert admission.prefill_tokens(waiting, now) is None
    assert _admission(2e-3, 2e-5, 0.0, admission="slots").prefill_tokens(young, now) is None


# -- the scheduler within it -----------------------------------------------------------------

def _session() -> Session:
    request = SpeechRequest.create("Hi.", defaults=SamplingConfig(), max_text_chars=100)
    return Session(request=request, seed=0, emit=lambda event: None)


def _at_most(scheduler: Scheduler, streams: int):
    return lambda session: len(scheduler.active) < streams


def test_admission_stops_at_capacity_with_slots_free_and_refuses_after_the_wait():
    scheduler = Scheduler(SchedulerConfig(max_concurrent_sessions=8, max_batch_size=8, max_queue_wait_s=0.5),
                          SlotAllocator(8), CodecConfig())
    sessions = [_session() for _ in range(4)]
    for session in sessions:
        scheduler.submit(session)
    assert scheduler.admit(_at_most(scheduler, 2)) == sessions[:2]
    assert scheduler.admit(_at_most(scheduler, 2)) == [] and scheduler.allocator.free_count == 6
    sessions[3].cancel()  # a cancelled one leaves the queue even at capacity, taking no slot
    ended = scheduler.take_ended(time.monotonic())
    assert [(s, outcome) for s, outcome, _ in ended] == [(sessions[3], Outcome.CANCELLED)]
    ended = scheduler.take_ended(sessions[2].created + 0.6)
    assert [(s, outcome) for s, outcome, _ in ended] == [(sessions[2], Outcome.REFUSED)]
    assert ended[0][2].startswith("server at capacity: waited 0.6 s in the queue (max_queue_wait_s=0.5) with "
                                  "2 streams admitted; retry after 1 s")
    assert scheduler.counters.refused_sessions == 1 and not scheduler.pending


def test_admitted_streams_between_pieces_still_count():
    scheduler = Scheduler(SchedulerConfig(max_concurrent_sessions=4, max_batch_size=4), SlotAllocator(4),
                          CodecConfig())
    first, second = _session(), _session()
    scheduler.submit(first)
    scheduler.admit(_at_most(scheduler, 1))  # WAITING_TEXT, decoding nothing yet: it holds its place all the same
    scheduler.submit(second)
    assert scheduler.admit(_at_most(scheduler, 1)) == []
    scheduler.release(first)
    assert scheduler.admit(_at_most(scheduler, 1)) == [second]


# -- through the real server ------------------------------------------------------------------

@pytest.fixture
def one_slot_server(start_http_server):
    return start_http_server(**{"scheduler.max_concurrent_sessions": 1, "scheduler.max_pending_sessions": 4,
                                "scheduler.max_queue_wait_s": 0.3})


async def _hold_the_slot(stub):
    """A streaming call that sends a sentence and then neither more text nor its end: it holds
    the only session slot (until the idle timeout, 30 s)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def requests():
        yield tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(voice="tara"))
        yield tts_pb2.StreamingSynthesizeRequest(input=tts_pb2.TextInput(text="Hold on."))
        await queue.get()

    call = stub.StreamingSynthesize(requests())
    for _ in range(100):
        stats = await stub.GetStats(tts_pb2.GetStatsRequest())
        if stats.free_slots == 0:
            return call
        await asyncio.sleep(0.05)
    raise AssertionError("the holding call never took the slot")


async def test_a_request_that_waited_the_bound_is_refused_by_every_door(one_slot_server):
    server = one_slot_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        holder = await _hold_the_slot(stub)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Me too.")):
                pass
        waited = time.monotonic() - started
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details().startswith("server at capacity: waited 0.")
        assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
        assert 0.3 <= waited < 5

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            response = await client.post("/v1/audio/speech", json={"input": "Me too.", "response_format": "pcm"})
            assert response.status_code == 429 and response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["code"] == "at_capacity" and error["type"] == "rate_limit_error"
            assert error["message"].startswith("server at capacity: waited 0.") and "server busy" not in error["message"]

            async with websockets.connect(server.ws_url) as ws:
                await ws.send(json.dumps({"text": "Me too."}))
                message = json.loads(await ws.recv())
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert message["error"]["code"] == "at_capacity" and closed.value.rcvd.code == 1013

            metrics = (await client.get("/metrics")).text
        assert 'orpheus_tts_refused_requests_total{reason="at_capacity"} 3.0' in metrics
        assert 'orpheus_tts_refused_requests_total{reason="queue_full"} 0.0' in metrics
        assert "orpheus_tts_capacity_streams 1.0" in metrics
        # What the figure is made of: the step cost as fitted (a step was run: it costs something) and
        # the context a stream holds over its life.
        fitted = {part: float(value) for part, value in
                  re.findall(r'orpheus_tts_step_cost_seconds\{part="(\w+)"\} (\S+)', metrics)}
        assert set(fitted) == {"fixed", "per_row", "per_context_token"} and sum(fitted.values()) > 0
        assert float(re.search(r"^orpheus_tts_stream_context_tokens (\S+)", metrics, re.M)[1]) > 0
        holder.cancel()
        for _ in range(100):  # the slot frees, and the next request is served
            if (await stub.GetStats(tts_pb2.GetStatsRequest())).free_slots == 1:
                break
            await asyncio.sleep(0.05)
        responses = [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Now me."))]
        assert responses[-1].HasField("metrics")
