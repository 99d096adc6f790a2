"""StreamingSynthesize: text arrives in pieces and audio starts before the text is complete."""

import asyncio
import time

import grpc
import pytest

from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from server_testkit import RunningServer, grpc_server_config


def config(**fields) -> tts_pb2.StreamingSynthesizeRequest:
    return tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(**fields))


def text(content, end=False) -> tts_pb2.StreamingSynthesizeRequest:
    field = "text_utf8" if isinstance(content, bytes) else "text"
    return tts_pb2.StreamingSynthesizeRequest(input=tts_pb2.TextInput(**{field: content, "end_of_text": end}))


async def read_to_end(call) -> list[tts_pb2.StreamingSynthesizeResponse]:
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


async def test_audio_arrives_before_the_last_text_piece_is_sent(tts):
    call = tts.StreamingSynthesize()
    await call.write(config(voice="mia", seed=1))
    await call.write(text("Hi. Then"))
    first = await call.read()
    assert first.HasField("format")
    second = await call.read()
    assert second.HasField("audio") and second.audio.text_piece == 0 and second.audio.first_frame == 0
    await call.write(text(" bye.", end=True))
    await call.done_writing()
    rest = await read_to_end(call)
    assert await call.code() == grpc.StatusCode.OK
    audio = [second.audio] + [r.audio for r in rest if r.HasField("audio")]
    assert {a.text_piece for a in audio} == {0, 1}
    assert rest[-1].metrics.text_pieces == 2 and rest[-1].metrics.frames == sum(a.frames for a in audio)


async def test_utf8_character_split_across_byte_pieces_is_joined(tts):
    word = "Café.".encode()
    cut = word.index(b"\xa9")  # between the two bytes of "é"
    call = tts.StreamingSynthesize()
    for request in (config(), text(word[:cut]), text(word[cut:], end=True)):
        await call.write(request)
    await call.done_writing()
    responses = await read_to_end(call)
    assert await call.code() == grpc.StatusCode.OK
    assert responses[-1].metrics.frames > 0


async def test_closing_the_request_stream_ends_the_text(tts):
    async def requests():
        yield text("No end.")

    responses = [r async for r in tts.StreamingSynthesize(requests())]
    assert responses[0].format.encoding == tts_pb2.AUDIO_ENCODING_PCM_S16LE
    assert responses[-1].metrics.frames > 0
    stats = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert stats.free_slots == stats.max_concurrent_sessions


async def test_no_slot_until_text_arrives_and_a_silent_client_is_ended_after_the_idle_timeout():
    """Config and then silence takes no session slot; text and then silence holds one only until
    the idle timeout, when the call ends with DEADLINE_EXCEEDED and the slot is free again."""
    server = RunningServer(grpc_server_config(**{"scheduler.max_concurrent_sessions": 2}), stream_idle_timeout_s=0.5)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            forever = asyncio.Event()

            async def silent(*first):
                for request in first:
                    yield request
                await forever.wait()

            idle = stub.StreamingSynthesize(silent(config(voice="tara")))
            talked = stub.StreamingSynthesize(silent(config(voice="tara"), text("One sentence.")))
            await asyncio.sleep(0.2)
            assert (await stub.GetStats(tts_pb2.GetStatsRequest())).free_slots == 1  # only `talked` holds one
            started = time.monotonic()
            for call in (idle, talked):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    async for _ in call:
                        pass
                assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert error.value.details().startswith("no text for 0.5 s (the server's idle timeout)")
            assert time.monotonic() - started < 10
            for _ in range(100):
                if (await stub.GetStats(tts_pb2.GetStatsRequest())).free_slots == 2:
                    break
                await asyncio.sleep(0.05)
            assert (await stub.GetStats(tts_pb2.GetStatsRequest())).free_slots == 2
    finally:
        server.close()
