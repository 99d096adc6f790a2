"""Property-based tests of the HTTP and WebSocket doors: `POST /v1/audio/speech` (the only POST;
OpenAI's fields, the seed's `text` and our sampling extensions) and `WS /v1/audio/stream`.

Bodies are JSON objects whose fields are good but for up to two hostile ones (wrong JSON types,
lone surrogates, NUL and controls, huge strings, integers of 5,000 digits, 1e309, NaN and
Infinity as raw JSON text, deep nesting) or a field we do not know, and bodies that are not one
JSON object at all (random bytes, truncated, 100,000 levels deep, not UTF-8). Every request must
get audio (read up to the first chunk, then the client leaves) or a 4xx with an OpenAI error body
that names the field when the body was an object; a WebSocket gets audio, or an error message
and a client-fault close code (1003, 1007, 1008, 1009), never 1011. Never a 5xx; the server's own
log line agrees, it logs no error, and after each example every slot is free and nothing is
queued; a normal request works after each test.

Quick by default; `ORPHEUS_TTS_FUZZ=long` (`make fuzz`) runs thousands of examples per test
(see fuzz_testkit.py).
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fuzz_testkit import (fuzz_settings, hostile_text, json_request, object_text, optional,
                          raw_bodies, refused_as_client_fault, speakable_text, watched)
from orpheus_tts import orpheus
from orpheus_tts.api.http.speech import SPEECH_FIELDS
from orpheus_tts.api.http.websocket import FIRST_FIELDS, PIECE_FIELDS
from orpheus_tts.requests import AUDIO_FORMATS
from server_testkit import RunningHttpServer, grpc_server_config

TIMEOUT_S = 30  # a request that takes longer has hung
CLIENT_FAULT_CLOSE_CODES = {1003, 1007, 1008, 1009}


@pytest.fixture(scope="module")
def server():
    with watched(RunningHttpServer(grpc_server_config())) as server_and_watch:
        yield server_and_watch


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0].url, timeout=TIMEOUT_S) as client:
        yield client


GOOD_FIELDS = {
    "input": speakable_text(), "voice": optional(st.sampled_from(orpheus.VOICES)),
    "response_format": optional(st.sampled_from(AUDIO_FORMATS)), "speed": optional(st.sampled_from([1, 1.0])),
    "temperature": optional(st.floats(0, 2)), "top_p": optional(st.floats(0, 1, exclude_min=True)),
    "repetition_penalty": optional(st.floats(1, 2)), "seed": optional(st.integers(0, 2**32 - 1)),
    "model": optional(st.sampled_from(["tts-1", "orpheus"])), "instructions": optional(st.just("")),
}
speech_bodies = st.one_of(
    json_request(GOOD_FIELDS | {"stream_format": optional(st.sampled_from(["audio", "sse"]))},
                 sorted(SPEECH_FIELDS)).map(lambda fields: (object_text(fields).encode(), True)),
    raw_bodies().map(lambda body: (body, False)),
)


def request_id() -> str:
    return uuid.uuid4().hex[:16]


def check_error_body(response_text: str, status: int, is_object: bool) -> None:
    error = json.loads(response_text)["error"]
    assert error["message"] and error["type"] == "invalid_request_error", error
    if is_object and status == 400 and error["code"] != "invalid_json":  # it parsed: the answer names the field
        assert error["param"] and error["param"] in error["message"], error


def assert_still_serving(server, client) -> None:
    response = client.post("/v1/audio/speech", json={"input": "Still here.", "response_format": "pcm"})
    assert response.status_code == 200 and response.content
    stats = client.get("/v1/stats").json()
    assert stats["kv_cache"]["free_slots"] == stats["scheduler"]["max_concurrent"]
    assert stats["scheduler"]["pending_sessions"] == 0


def test_speech_answers_audio_or_a_4xx_naming_the_field_for_any_body(server, client):
    running, watch = server

    @fuzz_settings()
    @given(body=speech_bodies)
    def example(body):
        data, is_object = body
        rid = request_id()
        headers = {"Content-Type": "application/json", "X-Request-Id": rid}
        with client.stream("POST", "/v1/audio/speech", content=data, headers=headers) as response:
            status = response.status_code
            first = next(response.iter_raw(), b"") if status == 200 else response.read()
        assert status in (200, 400, 413), (status, first[:200])
        if status == 200:
            assert first
            assert watch.outcome(rid)["outcome"] in ("ok", "cancelled")
        else:
            check_error_body(first.decode(), status, is_object)
            refused_as_client_fault(watch.outcome(rid))
        watch.settle()

    example()
    assert_still_serving(running, client)


# -- WebSocket ---------------------------------------------------------------------------------

FIRST_GOOD = GOOD_FIELDS | {"response_format": optional(st.just("pcm"))}
piece_bodies = json_request({"text": speakable_text(20)}, sorted(PIECE_FIELDS))


LEAVE = None  # the client goes away while its text is still due


@st.composite
def websocket_sessions(draw) -> list[str | bytes | None]:
    """The messages a client sends: one request; with streaming_text, pieces ended by an end message
    (or by the client leaving). Now and then a message is not JSON text at all."""
    streaming = draw(st.booleans())
    first = draw(json_request(FIRST_GOOD | {"streaming_text": st.just(streaming) if streaming else optional(
        st.just(False)), "end": optional(st.just(False))}, sorted(FIRST_FIELDS)))
    messages: list[str | bytes | None] = [object_text(first)]
    if streaming:
        messages += [object_text(piece) for piece in draw(st.lists(piece_bodies, max_size=3))]
        messages.append(LEAVE if draw(st.integers(0, 4)) == 0 else json.dumps({"end": True}))
    if draw(st.integers(0, 3)) == 0:
        odd = draw(st.one_of(raw_bodies().map(lambda b: b.decode("utf-8", "replace")), st.binary(max_size=16),
                             hostile_text(huge=300_000)))
        messages.insert(draw(st.integers(0, len(messages))), odd)
    return messages


def run_websocket(url: str, rid: str, messages: list) -> tuple[bytes, list[dict], int | None]:
    """Send every message (leaving at LEAVE), then read until the first audio (and leave) or the close."""
    texts: list[dict] = []
    with connect(url, additional_headers={"X-Request-Id": rid}, open_timeout=TIMEOUT_S, close_timeout=1,
                 max_size=None) as ws:
        try:
            for message in messages:
                if message is LEAVE:
                    return b"", texts, None
                ws.send(message)
        except ConnectionClosed:
            pass  # the server refused an earlier message: its answer is still to be read
        try:
            while True:
                message = ws.recv(timeout=TIMEOUT_S)
                if isinstance(message, bytes):
                    return message, texts, None
                texts.append(json.loads(message))
        except ConnectionClosed:
            pass
        return b"", texts, ws.close_code


def test_websocket_answers_audio_or_a_client_fault_close_for_any_messages(server):
    running, watch = server

    @fuzz_settings(0.8)
    @given(messages=websocket_sessions())
    def example(messages):
        rid = request_id()
        audio, texts, close_code = run_websocket(running.ws_url, rid, messages)
        if LEAVE in messages:
            assert watch.outcome(rid)["outcome"] in ("ok", "cancelled", "invalid_argument")
        elif audio:
            assert watch.outcome(rid)["outcome"] in ("ok", "cancelled")
        elif texts and texts[-1].get("done"):  # spoke, no audio: the model ended at once
            assert close_code == 1000
        else:
            assert close_code in CLIENT_FAULT_CLOSE_CODES, (close_code, texts)
            if close_code != 1009:  # too big: uvicorn closes before our code sees the message
                assert texts and texts[-1]["error"]["message"], texts
                refused_as_client_fault(watch.outcome(rid))
        watch.settle()

    example()
    with connect(running.ws_url) as ws:
        ws.send(json.dumps({"text": "Still here."}))
        messages = list(ws)
    assert isinstance(messages[0], bytes) and json.loads(messages[-1])["done"] is True
    watch.settle()


def test_a_top_p_that_is_zero_as_a_float32_is_refused_not_sampled_as_nan(server, client):
    """Found by the fuzz: 5e-324 passed the (0, 1] check, became 0 in the sampler's float32, kept no
    candidate and made the session's probabilities NaN."""
    running, watch = server
    response = client.post("/v1/audio/speech", content=b'{"input": "Hi.", "top_p": 5e-324}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_p"
    watch.settle()
