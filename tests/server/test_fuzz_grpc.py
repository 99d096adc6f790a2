"""Property-based tests of the gRPC door: every field of every request, and raw protobuf bytes.

Typed requests carry random values in every field (any float32 with NaN and infinities, any
uint32 seed, any enum number, text of any code point, huge text); raw requests are random wire
format: wrong wire types, bad lengths, invalid UTF-8 in strings, overlong varints, unknown
fields, and mutations of good messages. Every call must end with audio (read up to the first
chunk, then cancelled) or INVALID_ARGUMENT whose message starts with a field's name, never
INTERNAL or UNKNOWN; the server's own log line for the request agrees, it logs no error, and after
each example every slot is free and nothing is queued; a normal request works after each test.

Quick by default; `ORPHEUS_TTS_FUZZ=long` (`make fuzz`) runs thousands of examples per test
(see fuzz_testkit.py).
"""

from __future__ import annotations

import re
import uuid

import grpc
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz_testkit import (ServerWatch, fuzz_settings, hostile_text, mostly_good, optional, speakable_text,
                          text_chars, watched)
from orpheus_tts import orpheus
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from server_testkit import RunningServer, grpc_server_config

SERVICE = "/orpheus.tts.v1.TextToSpeech/"
FIELD_FIRST = re.compile(r"^[a-z0-9_]+: ")
CALL_TIMEOUT_S = 30  # a call that takes longer has hung


@pytest.fixture(scope="module")
def server():
    with watched(RunningServer(grpc_server_config())) as server_and_watch:
        yield server_and_watch


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server[0].address) as channel:
        yield channel


def call_id() -> tuple[str, tuple]:
    request_id = uuid.uuid4().hex[:16]
    return request_id, (("x-request-id", request_id),)


def read_until_audio(call) -> grpc.StatusCode:
    """Read a streaming call until its first audio chunk (then cancel it) or its end."""
    try:
        for response in call:
            if response.HasField("audio"):
                assert response.audio.data and response.audio.frames > 0
                call.cancel()
                return grpc.StatusCode.OK
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert FIELD_FIRST.match(error.details()), error.details()
        return error.code()
    return grpc.StatusCode.OK


def check_call(watch: ServerWatch, request_id: str, code: grpc.StatusCode) -> None:
    """The client saw audio or INVALID_ARGUMENT, and the server says the same.

    A grpc-python client still sending when the server ends the call may report INTERNAL of its
    own; the server's log line says what the server answered."""
    outcome = watch.outcome(request_id)
    event(f"server: {outcome['outcome']}")
    if outcome["outcome"] == "invalid_argument":
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), (code, outcome)
        assert FIELD_FIRST.match(outcome.get("detail", "")), outcome
    else:
        assert code == grpc.StatusCode.OK and outcome["outcome"] in ("ok", "cancelled"), (code, outcome)
    watch.settle()


def assert_still_serving(channel) -> None:
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    responses = list(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Still here."), timeout=CALL_TIMEOUT_S))
    assert responses[-1].metrics.frames > 0
    stats = stub.GetStats(tts_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S)
    assert stats.free_slots == stats.max_concurrent_sessions and stats.pending_sessions == 0


# -- typed requests ------------------------------------------------------------------------------

def floats32(lo: float, hi: float) -> st.SearchStrategy:
    return optional(st.floats(lo, hi, width=32, exclude_min=lo == 0 and hi == 1))


GOOD_CONFIG = {"voice": st.sampled_from(["", *orpheus.VOICES]), "encoding": st.sampled_from([0, 1, 2]),
               "ignore_end_of_speech": st.booleans(), "temperature": floats32(0, 2), "top_p": floats32(0, 1),
               "repetition_penalty": floats32(1, 2), "seed": optional(st.integers(0, 2**32 - 1))}
any_float32 = st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1e-45, 3.4e38, 2.0000002, 0.99999994]))
BAD_CONFIG = {"voice": st.text(text_chars(False), max_size=12), "encoding": st.integers(-(2**31), 2**31 - 1),
              "temperature": any_float32, "top_p": any_float32, "repetition_penalty": any_float32}
synthesize_requests = mostly_good({"text": speakable_text(), **GOOD_CONFIG},
                                  {"text": hostile_text(surrogates=False), **BAD_CONFIG})


def test_synthesize_answers_audio_or_invalid_argument_for_any_fields(server, channel):
    running, watch = server
    stub = tts_pb2_grpc.TextToSpeechStub(channel)

    @fuzz_settings()
    @given(fields=synthesize_requests)
    def example(fields):
        request_id, metadata = call_id()
        request = tts_pb2.SynthesizeRequest(**fields)
        check_call(watch, request_id, read_until_audio(stub.Synthesize(request, metadata=metadata,
                                                                       timeout=CALL_TIMEOUT_S)))

    example()
    assert_still_serving(channel)


def text_input(content: str | bytes, end: bool = False) -> tts_pb2.StreamingSynthesizeRequest:
    field = "text_utf8" if isinstance(content, bytes) else "text"
    return tts_pb2.StreamingSynthesizeRequest(input=tts_pb2.TextInput(**{field: content, "end_of_text": end}))


def config(fields: dict) -> tts_pb2.StreamingSynthesizeRequest:
    return tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(**fields))


good_pieces = st.lists(st.one_of(speakable_text(20), speakable_text(20).map(str.encode)), min_size=1, max_size=3)
bad_piece = st.one_of(
    st.builds(text_input, st.one_of(hostile_text(surrogates=False, huge=3000), st.binary(max_size=12),
                                    st.text(max_size=8).map(lambda t: t.encode()[1:])),  # a character cut at the front
              st.booleans()),
    mostly_good(GOOD_CONFIG, BAD_CONFIG).map(config))  # a config after the first request


@st.composite
def streams(draw) -> list[tts_pb2.StreamingSynthesizeRequest]:
    """A config (or none), good text pieces ended by end_of_text or by closing, and sometimes a bad
    piece somewhere among them."""
    requests = [config(draw(mostly_good(GOOD_CONFIG, BAD_CONFIG)))] if draw(st.booleans()) else []
    pieces = draw(good_pieces)
    requests += [text_input(piece) for piece in pieces[:-1]] + [text_input(pieces[-1], end=draw(st.booleans()))]
    if draw(st.integers(0, 2)) == 0:
        requests.insert(draw(st.integers(0, len(requests))), draw(bad_piece))
    return requests


def test_streaming_synthesize_answers_audio_or_invalid_argument_for_any_stream(server, channel):
    running, watch = server
    stub = tts_pb2_grpc.TextToSpeechStub(channel)

    @fuzz_settings(0.7)
    @given(requests=streams())
    def example(requests):
        request_id, metadata = call_id()
        check_call(watch, request_id, read_until_audio(stub.StreamingSynthesize(iter(requests), metadata=metadata,
                                                                                timeout=CALL_TIMEOUT_S)))

    example()
    assert_still_serving(channel)


# -- raw wire format -----------------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def wire_fields(draw, depth: int = 0) -> bytes:
    """One field in protobuf wire format, often not what the message declares for that number."""
    number = draw(st.one_of(st.integers(1, 9), st.integers(0, 2**29 - 1)))
    wire_type = draw(st.integers(0, 7))
    key = varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + draw(st.one_of(st.integers(0, 2**64 - 1).map(varint), st.just(b"\xff" * 11)))
    if wire_type == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        payload = draw(st.one_of(
            st.binary(max_size=16), st.text(max_size=16).map(str.encode),
            st.lists(wire_fields(depth + 1), max_size=3).map(b"".join) if depth < 2 else st.just(b"")))
        length = len(payload) + draw(st.sampled_from([0, 0, 0, -1, 1, 2**20]))
        return key + varint(max(length, 0)) + payload
    return key + draw(st.binary(max_size=4))  # groups (3, 4) and the wire types that do not exist (6, 7)


GOOD_MESSAGES = [
    tts_pb2.SynthesizeRequest(text="Hello there.", voice="leo", seed=7, temperature=0.5).SerializeToString(),
    tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(voice="tara")).SerializeToString(),
    tts_pb2.StreamingSynthesizeRequest(input=tts_pb2.TextInput(text="Hi.", end_of_text=True)).SerializeToString(),
]


@st.composite
def mutated(draw) -> bytes:
    """A good message with a few bytes changed, cut or added."""
    data = bytearray(draw(st.sampled_from(GOOD_MESSAGES)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


wire_messages = st.one_of(st.lists(wire_fields(), max_size=6).map(b"".join), mutated(), st.binary(max_size=32))


def raw(channel, method: str, kind: str):
    return getattr(channel, kind)(SERVICE + method, request_serializer=lambda data: data,
                                  response_deserializer=getattr(tts_pb2, f"{method}Response").FromString)


def test_raw_protobuf_to_every_method_gets_an_answer_or_invalid_argument(server, channel):
    running, watch = server
    methods = {"Synthesize": raw(channel, "Synthesize", "unary_stream"),
               "StreamingSynthesize": raw(channel, "StreamingSynthesize", "stream_stream"),
               "ListVoices": raw(channel, "ListVoices", "unary_unary"),
               "GetStats": raw(channel, "GetStats", "unary_unary")}

    @fuzz_settings()
    @given(method=st.sampled_from(sorted(methods)), messages=st.lists(wire_messages, min_size=1, max_size=3))
    def example(method, messages):
        request_id, metadata = call_id()
        call = methods[method]
        if method == "StreamingSynthesize":
            code = read_until_audio(call(iter(messages), metadata=metadata, timeout=CALL_TIMEOUT_S))
        elif method == "Synthesize":
            code = read_until_audio(call(messages[0], metadata=metadata, timeout=CALL_TIMEOUT_S))
        else:
            try:
                call(messages[0], metadata=metadata, timeout=CALL_TIMEOUT_S)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert error.details().startswith("request: malformed message"), error.details()
        if method in ("ListVoices", "GetStats"):  # logged at DEBUG: the client's status is the record
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
            watch.settle()
        else:
            check_call(watch, request_id, code)

    example()
    assert_still_serving(channel)
