"""StreamingSynthesize: text arrives in pieces and audio starts before the text is complete."""

import grpc

from orpheus_tts.api.gen import tts_pb2


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
