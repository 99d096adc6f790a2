"""Faults inside the engine: one session's failure ends that session as the server's error, the
rest of its batch goes on, and the engine keeps serving.

The faults are real, not mocks of our code:
- NaN logits for one session: a tiny real checkpoint whose embedding row of one byte ("~", only in
  that session's text) is NaN, so that prompt's hidden states and logits are NaN while every other
  row of the same batched prefill and decode stays finite. The sampler marks the row, the engine
  ends its session (INTERNAL / HTTP 500 / WebSocket 1011 with the request id in the message,
  counted as an internal error), and its KV slot serves the next session cleanly.
- A failure of a whole step: a forward pre-hook on the model's first block (torch's own hook API)
  raises once, as a device or kernel fault would inside the forward; the sessions of that step end
  with an error, a session not in it (waiting for streamed text) and later requests are served.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import grpc
import httpx
import pytest
import torch
import websockets
from safetensors.torch import load_file, save_file

from checkpoint_testkit import llama_config, write_checkpoint
from fuzz_testkit import watched
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.engine import AudioChunk, Engine, EngineObserver, Outcome, SessionEnd
from orpheus_tts.model.tokenizer import demo_tokenizer
from server_testkit import RunningHttpServer, grpc_server_config, small_config

POISON = "~"  # the byte whose embedding is NaN
POISONED_TEXT = f"Say {POISON} now, and then some more words."
GOOD_TEXTS = ["Hello there.", "Fine, thanks.", "Okay."]


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    """A tiny Orpheus-shaped checkpoint with the demo's byte tokenizer and a NaN embedding row for POISON."""
    directory = tmp_path_factory.mktemp("nan-checkpoint")
    write_checkpoint(directory, llama_config())
    tokenizer = demo_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    (poison_id,) = tokenizer.encode(POISON, add_special_tokens=False).ids
    weights = load_file(str(directory / "model.safetensors"))
    weights["model.embed_tokens.weight"][poison_id] = float("nan")
    save_file(weights, str(directory / "model.safetensors"))
    return directory


class Collected:
    """One session's events, gathered on the engine thread."""

    def __init__(self):
        self.audio: list[AudioChunk] = []
        self.end: SessionEnd | None = None
        self.ended = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, SessionEnd):
            self.end = event
            self.ended.set()
        else:
            self.audio.append(event)

    def wait(self) -> SessionEnd:
        assert self.ended.wait(60), "the session never ended"
        return self.end


def submit(engine: Engine, text: str, streaming: bool = False) -> tuple[Collected, object]:
    events = Collected()
    request = engine.make_request(text, allow_empty_text=streaming, seed=1)
    return events, engine.submit(request, events, streaming_text=streaming)


def assert_free(engine: Engine) -> None:
    stats = engine.stats()
    assert stats.free_slots == stats.max_concurrent and not stats.active_sessions and not stats.pending_sessions


@pytest.fixture
def nan_engine(nan_checkpoint):
    engine = Engine.from_config(small_config(**{"model.path": str(nan_checkpoint),
                                                "scheduler.max_concurrent_sessions": 4}))
    yield engine
    engine.stop()


def test_nan_logits_end_only_their_session_and_the_rest_of_the_batch_goes_on(nan_engine):
    engine = nan_engine
    sessions = [submit(engine, text) for text in [POISONED_TEXT, *GOOD_TEXTS]]  # before the loop: one prefill
    engine.start()
    poisoned, *good = [events.wait() for events, _ in sessions]
    assert engine.scheduler.counters.total_prefills == 1  # all four were in one batch
    assert poisoned.outcome is Outcome.ERROR and "not finite" in poisoned.error
    assert not sessions[0][0].audio
    for end, (events, _) in zip(good, sessions[1:]):
        assert end.outcome is Outcome.OK and end.metrics.frames > 0 and events.audio
    assert_free(engine)
    # The poisoned session's slot (0, the lowest) goes to the first of the next pair, the shorter
    # prompt of a shared prefill: its attention reads past its own length, where the NaN session's
    # longer prompt left NaN keys and values (the longer row's padding covers only its own length).
    prefills = engine.scheduler.counters.total_prefills
    with engine._wake:  # holds the loop between steps while both are queued
        again = [submit(engine, "Hi."), submit(engine, "Hello.")]
    for events, _ in again:
        end = events.wait()
        assert end.outcome is Outcome.OK and end.metrics.frames > 0, end.error
    assert engine.scheduler.counters.total_prefills == prefills + 1
    assert_free(engine)


def fail_one_step_beside_a_waiting_session(engine: Engine, arm) -> list[SessionEnd]:
    """Two sessions queued for the first step, which `arm()` makes fail, beside a streaming one
    holding a slot but in no step until its text comes. Checks that the waiting one and a later
    request are still served; returns the two failed sessions' ends."""
    waiting, waiting_session = submit(engine, "", streaming=True)
    in_step = [submit(engine, text) for text in GOOD_TEXTS[:2]]  # before the loop: one prefill
    arm()
    engine.start()
    ends = [events.wait() for events, _ in in_step]
    assert not waiting.ended.is_set()
    engine.add_text(waiting_session, ["Still here."], close=True)
    assert waiting.wait().outcome is Outcome.OK and waiting.audio
    later, _ = submit(engine, "And after.")
    assert later.wait().outcome is Outcome.OK and later.audio
    return ends


def test_a_failed_step_ends_its_sessions_only_and_the_engine_keeps_serving(nan_engine):
    engine = nan_engine
    failing = threading.Event()

    def device_fault(module, args):
        if failing.is_set():
            failing.clear()
            raise RuntimeError("simulated device fault in the forward")

    hook = engine.runner.model.layers[0].register_forward_pre_hook(device_fault)
    try:
        for end in fail_one_step_beside_a_waiting_session(engine, failing.set):
            assert end.outcome is Outcome.ERROR and "simulated device fault" in end.error
    finally:
        hook.remove()
    assert_free(engine)


class FailingOnce(EngineObserver):
    """A metrics hook with a bug that fires once: a failure of the loop outside the forward."""

    def __init__(self):
        self.armed = threading.Event()

    def on_step(self, seconds, decode_batch, prefill_batch, stats) -> None:
        if self.armed.is_set():
            self.armed.clear()
            raise RuntimeError("a bug in a step hook")


def test_a_bug_in_the_loop_ends_the_sessions_its_step_had_in_hand_and_no_others():
    observer = FailingOnce()
    engine = Engine.from_config(small_config(), observer=observer)
    try:
        for end in fail_one_step_beside_a_waiting_session(engine, observer.armed.set):
            assert end.outcome is Outcome.ERROR
    finally:
        engine.stop()
    assert_free(engine)


# -- through the doors ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_server(nan_checkpoint):
    with watched(RunningHttpServer(grpc_server_config(**{"model.path": str(nan_checkpoint)}))) as server_and_watch:
        yield server_and_watch


def counted(server, metric: str, **labels) -> float:
    return server.server.metrics.registry.get_sample_value(f"orpheus_tts_{metric}_total", labels) or 0.0


def test_nan_logits_are_an_internal_error_with_the_request_id_on_every_door(nan_server):
    server, watch = nan_server
    with grpc.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=POISONED_TEXT), metadata=(("x-request-id", "nan-grpc"),))
        with pytest.raises(grpc.RpcError) as failed:
            list(call)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "not finite" in failed.value.details() and "(request nan-grpc)" in failed.value.details()
        assert list(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Still fine.")))[-1].metrics.frames > 0

    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/audio/speech", json={"input": POISONED_TEXT}, headers={"X-Request-Id": "nan-http"})
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "server_error" and "(request nan-http)" in error["message"], error
        assert client.post("/v1/audio/speech", json={"input": "Still fine."}).status_code == 200

    async def websocket() -> tuple[int, dict]:
        async with websockets.connect(server.ws_url, additional_headers={"X-Request-Id": "nan-ws"}) as ws:
            await ws.send(json.dumps({"text": POISONED_TEXT}))
            message = await ws.recv()
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            return ws.close_code, json.loads(message)

    code, message = asyncio.run(websocket())
    assert code == 1011 and "(request nan-ws)" in message["error"]["message"], message

    for request_id, method in (("nan-grpc", "Synthesize"), ("nan-http", "http_speech"), ("nan-ws", "websocket_stream")):
        line = watch.outcome(request_id)
        assert line["outcome"] == "internal" and "not finite" in line["detail"], line
        assert counted(server, "requests", method=method, outcome="internal") == 1
    assert any("non-finite logits" in error for error in watch.errors)
    assert counted(server, "sessions", outcome="error") == 3
    watch.errors = [error for error in watch.errors if "non-finite logits" not in error]
    watch.settle()
