"""Admission past capacity: the real-time capacity the step cost implies, the scheduler keeping the
admitted streams within it, and a request that waited the queue's bound refused through every door
(gRPC RESOURCE_EXHAUSTED, HTTP 429, WebSocket 1013) with Retry-After, counted by reason."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.config import CodecConfig, SamplingConfig, SchedulerConfig
from orpheus_tts.engine.capacity import REALTIME_STEP_S, realtime_capacity, token_period_s
from orpheus_tts.engine.kv_cache import SlotAllocator
from orpheus_tts.engine.scheduler import Scheduler
from orpheus_tts.engine.session import Outcome, Session
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


# -- the scheduler within it -----------------------------------------------------------------

def _session() -> Session:
    request = SpeechRequest.create("Hi.", defaults=SamplingConfig(), max_text_chars=100)
    return Session(request=request, seed=0, emit=lambda event: None)


def test_admission_stops_at_capacity_with_slots_free_and_refuses_after_the_wait():
    scheduler = Scheduler(SchedulerConfig(max_concurrent_sessions=8, max_batch_size=8, max_queue_wait_s=0.5),
                          SlotAllocator(8), CodecConfig())
    sessions = [_session() for _ in range(4)]
    for session in sessions:
        scheduler.submit(session)
    assert scheduler.admit(capacity=2) == sessions[:2]
    assert scheduler.admit(capacity=2) == [] and scheduler.allocator.free_count == 6
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
    scheduler.admit(capacity=1)  # WAITING_TEXT, decoding nothing yet: it holds its place all the same
    scheduler.submit(second)
    assert scheduler.admit(capacity=1) == []
    scheduler.release(first)
    assert scheduler.admit(capacity=1) == [second]


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
        holder.cancel()
        for _ in range(100):  # the slot frees, and the next request is served
            if (await stub.GetStats(tts_pb2.GetStatsRequest())).free_slots == 1:
                break
            await asyncio.sleep(0.05)
        responses = [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Now me."))]
        assert responses[-1].HasField("metrics")
