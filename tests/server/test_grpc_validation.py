"""Bad input gets INVALID_ARGUMENT naming the field, nothing is admitted, and the server keeps serving."""

import grpc
import pytest

from orpheus_tts.api.gen import tts_pb2

BAD_REQUESTS = {
    "empty_text": ({"text": ""}, "text"),
    "whitespace_text": ({"text": " \n\t "}, "text"),
    "text_over_the_limit": ({"text": "x" * 201}, "text"),
    "unknown_voice": ({"text": "Hi.", "voice": "bob"}, "voice"),
    "temperature_too_high": ({"text": "Hi.", "temperature": 2.5}, "temperature"),
    "temperature_negative": ({"text": "Hi.", "temperature": -0.1}, "temperature"),
    "temperature_nan": ({"text": "Hi.", "temperature": float("nan")}, "temperature"),
    "top_p_zero": ({"text": "Hi.", "top_p": 0.0}, "top_p"),
    "top_p_above_one": ({"text": "Hi.", "top_p": 1.5}, "top_p"),
    "repetition_penalty_below_one": ({"text": "Hi.", "repetition_penalty": 0.5}, "repetition_penalty"),
    "repetition_penalty_too_high": ({"text": "Hi.", "repetition_penalty": 3.0}, "repetition_penalty"),
    "unknown_encoding": ({"text": "Hi.", "encoding": 7}, "encoding"),
}


async def expect_invalid_argument(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    return error.value


@pytest.mark.parametrize("fields, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_synthesize_request_gets_invalid_argument_naming_the_field(tts, fields, field):
    before = await tts.GetStats(tts_pb2.GetStatsRequest())
    error = await expect_invalid_argument(tts.Synthesize(tts_pb2.SynthesizeRequest(**fields)))
    assert error.details().startswith(f"{field}: ")
    after = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert after.total_sessions == before.total_sessions  # nothing was admitted


async def test_server_keeps_serving_after_bad_requests(tts):
    for fields, _ in BAD_REQUESTS.values():
        await expect_invalid_argument(tts.Synthesize(tts_pb2.SynthesizeRequest(**fields)))
    responses = [r async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text="Still here."))]
    assert responses[-1].metrics.frames > 0


def streaming(*requests):
    async def generate():
        for request in requests:
            yield request
    return generate()


def text(content, end=False) -> tts_pb2.StreamingSynthesizeRequest:
    field = "text_utf8" if isinstance(content, bytes) else "text"
    return tts_pb2.StreamingSynthesizeRequest(input=tts_pb2.TextInput(**{field: content, "end_of_text": end}))


def config(**fields) -> tts_pb2.StreamingSynthesizeRequest:
    return tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(**fields))


# Each stream ends with its bad request: a grpc-python client that writes after the server has
# ended the call may report INTERNAL instead of the server's status.
BAD_STREAMS = {
    "invalid_utf8_bytes": ((config(), text(b"Hello \xff there.", end=True)), "text_utf8"),
    "utf8_character_cut_at_the_end": ((config(), text("Hello "), text(b"\xc3", end=True)), "text_utf8"),
    "only_whitespace": ((config(), text("  "), text(" ", end=True)), "text"),
    "nothing_but_config": ((config(),), "text"),
    "unknown_voice": ((config(voice="bob"),), "voice"),
    "top_p_out_of_range": ((config(top_p=2.0),), "top_p"),
    "unknown_encoding": ((config(encoding=9),), "encoding"),
    "config_after_the_first_request": ((text("Hi. "), config(voice="leo")), "config"),
    "text_over_the_limit": ((config(), *[text("Many words make a long text. ")] * 7), "text"),
    "text_after_end_of_text": ((config(), text("Hi.", end=True), text("More.")), "input"),
}


@pytest.mark.parametrize("requests, field", BAD_STREAMS.values(), ids=BAD_STREAMS.keys())
async def test_bad_streaming_input_gets_invalid_argument_naming_the_field(tts, requests, field):
    error = await expect_invalid_argument(tts.StreamingSynthesize(streaming(*requests)))
    assert error.details().startswith(f"{field}: ")
    stats = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert stats.free_slots == stats.max_concurrent_sessions


# Messages that do not parse, sent as raw bytes: gRPC would answer them itself with UNKNOWN.
INVALID_UTF8_TEXT = b"\x0a\x03Hi\xff"  # field 1 (`text`, a string) holding invalid UTF-8
MALFORMED_SYNTHESIZE = {
    "invalid_utf8_in_a_string": INVALID_UTF8_TEXT,
    "truncated_wire_format": b"\x0a\x10Hi",  # a 16-byte string with 2 bytes
}


def raw_call(channel, method: str, streaming_requests: bool):
    call = channel.stream_stream if streaming_requests else channel.unary_stream
    return call(f"/orpheus.tts.v1.TextToSpeech/{method}", request_serializer=lambda data: data,
                response_deserializer=lambda data: data)


@pytest.mark.parametrize("message", MALFORMED_SYNTHESIZE.values(), ids=MALFORMED_SYNTHESIZE.keys())
async def test_a_message_that_does_not_parse_gets_invalid_argument(grpc_server, tts, message):
    async with grpc.aio.insecure_channel(grpc_server.address) as channel:
        error = await expect_invalid_argument(raw_call(channel, "Synthesize", False)(message))
    assert error.details().startswith("request: malformed message: ")
    responses = [r async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text="Still here."))]
    assert responses[-1].metrics.frames > 0


async def test_a_streamed_piece_that_does_not_parse_gets_invalid_argument(grpc_server, tts):
    piece = b"\x12" + bytes([len(INVALID_UTF8_TEXT)]) + INVALID_UTF8_TEXT  # field 2 (`input`): a TextInput
    async with grpc.aio.insecure_channel(grpc_server.address) as channel:
        call = raw_call(channel, "StreamingSynthesize", True)
        error = await expect_invalid_argument(call(streaming(config().SerializeToString(), piece)))
    assert error.details().startswith("request: malformed message: ")
    stats = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert stats.free_slots == stats.max_concurrent_sessions
