"""Synthesize over a real gRPC connection: the stream's shape, concurrency, cancellation, back-pressure."""

import asyncio
import io
import wave

import grpc
import numpy as np
import pytest

from orpheus_tts import orpheus
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

FRAME_BYTES = orpheus.SAMPLES_PER_FRAME * 2


async def collect(call) -> list[tts_pb2.SynthesizeResponse]:
    return [response async for response in call]


async def wait_for_free_slots(stub, timeout_s: float = 10.0) -> tts_pb2.GetStatsResponse:
    """Slots are freed at the engine's next step, so poll briefly."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        stats = await stub.GetStats(tts_pb2.GetStatsRequest())
        if stats.free_slots == stats.max_concurrent_sessions or asyncio.get_running_loop().time() > deadline:
            return stats
        await asyncio.sleep(0.05)


async def test_synthesize_streams_format_then_whole_frames_of_pcm_then_metrics(tts):
    responses = await collect(tts.Synthesize(tts_pb2.SynthesizeRequest(text="Hello world.", seed=7)))
    kinds = [r.WhichOneof("content") for r in responses]
    assert kinds[0] == "format" and kinds[-1] == "metrics" and set(kinds[1:-1]) == {"audio"}
    fmt = responses[0].format
    assert (fmt.sample_rate_hz, fmt.encoding, fmt.channels, fmt.bits_per_sample) == \
        (24000, tts_pb2.AUDIO_ENCODING_PCM_S16LE, 1, 16)
    chunks = [r.audio for r in responses[1:-1]]
    assert all(len(c.data) % FRAME_BYTES == 0 and len(c.data) == c.frames * FRAME_BYTES for c in chunks)
    assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    samples = np.frombuffer(b"".join(c.data for c in chunks), "<i2")
    assert samples.size > 0 and np.abs(samples).max() > 0
    metrics = responses[-1].metrics
    assert metrics.request_id == fmt.request_id != ""
    assert metrics.frames == sum(c.frames for c in chunks)
    assert metrics.audio_ms == pytest.approx(samples.size / 24.0)
    assert 0 < metrics.ttfb_ms <= metrics.elapsed_ms and metrics.tokens >= 7 * metrics.frames
    assert metrics.real_time_factor > 0 and metrics.text_pieces == 1


async def test_wav_encoding_concatenates_into_a_playable_24khz_file(tts):
    request = tts_pb2.SynthesizeRequest(text="Hi.", voice="leo", encoding=tts_pb2.AUDIO_ENCODING_WAV)
    responses = await collect(tts.Synthesize(request))
    data = b"".join(r.audio.data for r in responses if r.HasField("audio"))
    assert responses[0].format.encoding == tts_pb2.AUDIO_ENCODING_WAV
    with wave.open(io.BytesIO(data)) as w:  # the streaming header: sizes unknown, the reader uses what is there
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert len(w.readframes(10**9)) == len(data) - 44 == responses[-1].metrics.frames * FRAME_BYTES


async def test_same_seed_gives_the_same_audio(tts):
    request = tts_pb2.SynthesizeRequest(text="Hi.", seed=3, temperature=0.9)
    first, second = [b"".join(r.audio.data for r in await collect(tts.Synthesize(request)) if r.HasField("audio"))
                     for _ in range(2)]
    assert first == second and first


async def test_sixteen_concurrent_streams_all_complete_and_free_every_slot(tts):
    texts = [f"Line {i}." for i in range(16)]
    results = await asyncio.gather(*(collect(tts.Synthesize(tts_pb2.SynthesizeRequest(text=t))) for t in texts))
    for responses in results:
        assert responses[0].HasField("format") and responses[-1].HasField("metrics")
        audio = [r.audio for r in responses if r.HasField("audio")]
        assert audio and sum(a.frames for a in audio) == responses[-1].metrics.frames > 0
        assert all(len(a.data) % FRAME_BYTES == 0 for a in audio)
    stats = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert stats.ready and stats.max_concurrent_sessions == 16
    assert (stats.free_slots, stats.used_slots, stats.active_sessions, stats.pending_sessions) == (16, 0, 0, 0)


async def test_client_cancelling_mid_stream_frees_its_slot(tts):
    call = tts.Synthesize(tts_pb2.SynthesizeRequest(text="A long sentence that takes a good while to speak, " * 3))
    async for response in call:
        if response.HasField("audio"):
            break
    busy = await tts.GetStats(tts_pb2.GetStatsRequest())
    assert busy.active_sessions == 1 and busy.free_slots == 15
    call.cancel()
    stats = await wait_for_free_slots(tts)
    assert (stats.free_slots, stats.active_sessions) == (16, 0)


async def test_client_deadline_ends_the_stream_and_frees_its_slot(tts):
    call = tts.Synthesize(tts_pb2.SynthesizeRequest(text="A long sentence that takes a good while to speak, " * 3),
                          timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await collect(call)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await wait_for_free_slots(tts)).free_slots == 16


async def test_full_admission_queue_gets_resource_exhausted_with_retry_after(start_grpc_server):
    server = start_grpc_server(**{"scheduler.max_concurrent_sessions": 1, "scheduler.max_pending_sessions": 0})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        long_call = stub.Synthesize(tts_pb2.SynthesizeRequest(text="Keep talking for a while, please. " * 3))
        async for response in long_call:
            if response.HasField("audio"):
                break
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Me too.")))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(error.value.trailing_metadata())["retry-after"] == "1"
        long_call.cancel()
        assert (await wait_for_free_slots(stub)).free_slots == 1
        responses = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Now me.")))
        assert responses[-1].HasField("metrics")
        assert (await stub.GetStats(tts_pb2.GetStatsRequest())).rejected_sessions == 1


async def test_request_id_sent_by_the_client_is_echoed(tts):
    call = tts.Synthesize(tts_pb2.SynthesizeRequest(text="Hi."), metadata=(("x-request-id", "abc-123"),))
    responses = await collect(call)
    assert responses[0].format.request_id == responses[-1].metrics.request_id == "abc-123"
    assert dict(await call.trailing_metadata())["x-request-id"] == "abc-123"


async def test_list_voices_names_every_orpheus_voice(tts):
    response = await tts.ListVoices(tts_pb2.ListVoicesRequest())
    assert [v.name for v in response.voices] == list(orpheus.VOICES)
    assert response.default_voice == "tara" and "<laugh>" in response.emotion_tags




async def test_ignore_end_of_speech_reaches_the_sampler_and_the_stream_speaks_its_whole_budget(tts, grpc_server):
    """The benchmark switch: proto field -> request -> the sampler's per-row end-of-speech flag
    (the sampler tests show the flag's effect), and a stream with it speaks its whole budget."""
    from orpheus_tts.api.messages import speech_request
    from orpheus_tts.engine.runner import ModelRunner
    from orpheus_tts.engine.session import Session

    engine = grpc_server.server.engine
    text = "The quick brown fox."
    sessions = []
    for ignore in (True, False):
        request = speech_request(engine, tts_pb2.SynthesizeRequest(text=text, ignore_end_of_speech=ignore), text)
        session = Session(request=request, seed=1, emit=lambda event: None)
        session.add_pieces(engine.make_pieces(request.voice, text), close=True)
        session.take_incoming()
        session.start_next_piece(1, 1)
        session.slot = len(sessions)
        sessions.append(session)
    ints, _ = ModelRunner.prefill_inputs(sessions)
    assert ints[4].tolist() == [0, 1]  # end of speech: suppressed, allowed

    budget_frames = orpheus.audio_token_budget(text) // orpheus.TOKENS_PER_FRAME
    responses = await collect(tts.Synthesize(tts_pb2.SynthesizeRequest(text=text, seed=3, ignore_end_of_speech=True)))
    metrics = responses[-1].metrics
    assert metrics.frames == budget_frames and metrics.tokens == budget_frames * orpheus.TOKENS_PER_FRAME
