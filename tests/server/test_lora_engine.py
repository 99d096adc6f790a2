"""Fine-tuned voices through the engine and its doors: the demo model with PEFT adapters in a
watched directory, rows with and without adapters in one batch, voices mapped to adapters,
adapters registered while serving, and bad names or files refused by name."""

import asyncio
import shutil

import grpc
import httpx
import numpy as np
import pytest

from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.engine.engine import Engine
from orpheus_tts.engine.session import AudioChunk, Outcome
from orpheus_tts.errors import RequestError
from lora_testkit import demo_config, make_adapter
from server_testkit import small_config

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT = "A fine tuned voice says hello."
ONE_PIECE = "Hi there, friend."  # within one KV slot of the test server: no piece join to smooth over HTTP


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    made = {}
    for seed, name in enumerate(("alice", "bob"), start=1):
        made[name] = tmp_path_factory.mktemp(name)
        make_adapter(demo_config(), made[name], seed, 4, ALL_TARGETS)
    return made


@pytest.fixture
def served(adapter_dirs, tmp_path):
    """An adapters directory holding alice (bob is copied in by the tests that register it)."""
    shutil.copytree(adapter_dirs["alice"], tmp_path / "alice")
    return tmp_path


def settings(directory, **more):
    return {"adapters.dir": str(directory), "adapters.max_resident": 2, "adapters.max_rank": 8,
            "adapters.scan_interval_s": 0.05, "adapters.voices": ["ally:alice"], **more}


async def speak(engine, text=TEXT, **fields):
    samples, end = [], None
    async for event in engine.synthesize(engine.make_request(text, **fields)):
        if isinstance(event, AudioChunk):
            samples.append(event.samples)
        else:
            end = event
    assert end.outcome is Outcome.OK, end.error
    return np.concatenate(samples)


async def test_rows_with_and_without_adapters_share_steps_and_each_gets_its_own_speech(served):
    engine = Engine.from_config(small_config(**settings(served))).start()
    try:
        base = await speak(engine, seed=7)
        alice = await speak(engine, seed=7, adapter="alice")
        assert len(alice) == len(base)  # the same text's budget
        assert not np.allclose(alice, base)  # the adapter changes what is said
        together = await asyncio.gather(speak(engine, seed=7), speak(engine, seed=7, adapter="alice"),
                                        speak(engine, seed=7, adapter="alice"))
        # The same ids each: audio equal but for the codec's last bits (its windows batch differently).
        assert np.allclose(together[0], base, atol=1e-5)
        assert np.allclose(together[1], alice, atol=1e-5) and np.allclose(together[2], alice, atol=1e-5)
        assert engine.adapters.resident == {"alice": 0} and engine.adapters.loads == 1
        ally = engine.make_request(TEXT, voice="ally")
        assert (ally.voice, ally.adapter) == ("ally", "alice")  # a voice mapped to an adapter runs on it
    finally:
        engine.stop()


async def test_an_adapter_copied_in_while_serving_is_served_and_bad_names_are_refused(served, adapter_dirs):
    engine = Engine.from_config(small_config(**settings(served))).start()
    try:
        with pytest.raises(RequestError) as unknown:
            engine.make_request(TEXT, adapter="bob")
        assert unknown.value.field == "adapter" and "unknown adapter 'bob'; this server has alice" in str(unknown.value)
        with pytest.raises(RequestError) as malformed:
            engine.make_request(TEXT, adapter="../alice")
        assert malformed.value.field == "adapter"
        shutil.copytree(adapter_dirs["bob"], served / "bob")
        await asyncio.sleep(0.1)  # the directory is looked at every scan_interval_s
        bob = await speak(engine, seed=3, adapter="bob")
        alice = await speak(engine, seed=3, adapter="alice")
        assert not np.allclose(bob, alice)
    finally:
        engine.stop()


async def test_an_adapter_whose_files_do_not_fit_ends_its_session_with_the_reason(served, tmp_path_factory):
    wrong = served / "wrong"
    make_adapter(demo_config().__class__(**{**demo_config().to_dict(), "intermediate_size": 256}), wrong, 5, 4,
                 ["down_proj"])
    engine = Engine.from_config(small_config(**settings(served))).start()
    try:
        events = [e async for e in engine.synthesize(engine.make_request(TEXT, adapter="wrong"))]
        assert events[-1].outcome is Outcome.ERROR and "do not fit this model" in events[-1].error
        assert len(await speak(engine, seed=1, adapter="alice")) > 0  # the others are served
    finally:
        engine.stop()


def test_a_server_without_adapters_refuses_one_by_name():
    engine = Engine.from_config(small_config())
    with pytest.raises(RequestError, match="this server serves no adapters"):
        engine.make_request(TEXT, adapter="alice")


async def test_grpc_and_http_select_adapters_and_list_their_voices(served, start_http_server):
    server = start_http_server(**settings(served))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        voices = await stub.ListVoices(tts_pb2.ListVoicesRequest())
        assert {(v.name, v.adapter) for v in voices.voices} >= {("tara", ""), ("ally", "alice")}
        pcm = b"".join([r.audio.data async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(
            text=ONE_PIECE, seed=11, adapter="alice", encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE))
            if r.HasField("audio")])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text=TEXT, adapter="nobody")):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("adapter: unknown adapter 'nobody'")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        listed = (await client.get("/v1/audio/voices")).json()["voices"]
        assert {"name": "ally", "adapter": "alice"} in listed
        body = {"input": ONE_PIECE, "seed": 11, "response_format": "pcm"}
        by_model = await client.post("/v1/audio/speech", json={**body, "model": "alice"})
        base = await client.post("/v1/audio/speech", json={**body, "model": "tts-1"})
        metrics = (await client.get(server.metrics_url)).text
    assert 'orpheus_tts_adapter_sessions_total{adapter="alice",outcome="ok"} 2.0' in metrics
    assert 'orpheus_tts_adapter_ttfb_seconds_count{adapter="alice"} 2.0' in metrics
    as_int = lambda data: np.frombuffer(data, dtype=np.int16).astype(np.int32)  # noqa: E731
    assert by_model.status_code == 200 and base.status_code == 200
    # OpenAI's `model` names the adapter: the same speech as gRPC's (to a rounding of the last bit)
    assert len(by_model.content) == len(pcm) and np.abs(as_int(by_model.content) - as_int(pcm)).max() <= 1
    assert np.abs(as_int(base.content) - as_int(pcm)).max() > 100  # any other model is the base model


def test_adapter_labels_stop_growing_past_their_bound():
    from orpheus_tts.engine.session import SessionMetrics
    from orpheus_tts.metrics import MAX_ADAPTER_LABELS, ServerMetrics

    metrics = ServerMetrics()
    for i in range(MAX_ADAPTER_LABELS + 5):
        metrics.on_session_end(Outcome.OK, SessionMetrics(ttfb_s=0.05, adapter=f"voice-{i}"))
    samples = {s.labels["adapter"]: s.value for m in metrics.adapter_sessions.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert len(samples) == MAX_ADAPTER_LABELS + 1 and samples["_other"] == 5.0
