"""`POST /v1/audio/speech` and the small endpoints over real HTTP on loopback (httpx, curl)."""

import asyncio
import base64
import io
import json
import shutil
import subprocess
import wave

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orpheus_tts import orpheus

SEED_CURL = ["curl", "-X", "POST", "http://localhost:8000/v1/audio/speech", "-H", "Content-Type: application/json",
             "-d", '{"text": "Hello!", "voice": "tara"}', "--output", "speech.wav"]


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:  # the streaming header: sizes unknown, the reader uses what is there
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        return np.frombuffer(w.readframes(10**9), "<i2")


def test_the_seeds_curl_example_works_unchanged(http_server, tmp_path):
    command = [a.replace("localhost:8000", f"localhost:{http_server.server.http_port}") for a in SEED_CURL]
    if shutil.which("curl"):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=60)
        data = (tmp_path / "speech.wav").read_bytes()
    else:  # the identical request
        data = httpx.post(command[3], headers={"Content-Type": "application/json"}, content=command[7], timeout=60).content
    samples = wav_samples(data)
    assert samples.size > 0 and samples.size % orpheus.SAMPLES_PER_FRAME == 0 and np.abs(samples).max() > 0


async def test_audio_streams_in_chunks_as_it_is_generated(http_server):
    body = {"input": "A streamed sentence, long enough for several chunks.", "voice": "leo", "response_format": "pcm",
            "seed": 3}
    arrivals, data = [], bytearray()
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "audio/pcm"
            assert response.headers["transfer-encoding"] == "chunked" and response.headers["x-request-id"]
            async for chunk in response.aiter_raw():
                arrivals.append(asyncio.get_running_loop().time())
                data += chunk
    assert len(arrivals) > 2 and arrivals[-1] - arrivals[0] > 0  # not one block at the end
    assert len(data) % (2 * orpheus.SAMPLES_PER_FRAME) == 0


async def test_wav_stream_has_a_header_players_accept_before_the_length_is_known(http_server):
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        response = await client.post("/v1/audio/speech", json={"input": "Hi.", "response_format": "wav", "seed": 1})
    assert response.content[:4] == b"RIFF" and response.content[40:44] == b"\xff\xff\xff\xff"
    assert wav_samples(response.content).size % orpheus.SAMPLES_PER_FRAME == 0


async def test_same_seed_gives_the_same_audio_and_sampling_extensions_are_accepted(http_server):
    body = {"input": "Hi.", "response_format": "pcm", "seed": 9, "temperature": 0.9, "top_p": 0.95,
            "repetition_penalty": 1.2, "model": "tts-1", "speed": 1.0}
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        first, second = [await client.post("/v1/audio/speech", json=body) for _ in range(2)]
    assert first.status_code == second.status_code == 200 and first.content == second.content != b""


async def test_sse_stream_sends_base64_deltas_then_done_with_metrics(http_server):
    body = {"input": "Events.", "response_format": "pcm", "stream_format": "sse", "seed": 2}
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        response = await client.post("/v1/audio/speech", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    metrics = events[-1]["metrics"]
    assert len(pcm) == metrics["frames"] * orpheus.SAMPLES_PER_FRAME * 2 > 0 and metrics["ttfb_ms"] > 0


BAD_BODIES = [
    (b'{"input": "Hi."', 400, None, "malformed JSON"),
    (b'["Hi."]', 400, None, "JSON object"),
    (b'{"input": 5}', 400, "input", "must be a string"),
    (b'{"input": "Hi.", "colour": "blue"}', 400, "colour", "unrecognized request argument"),
    (b'{"input": "Hi.", "voice": "alloy"}', 400, "voice", "unknown voice 'alloy'"),
    (b'{"input": "Hi.", "response_format": "aac"}', 400, "response_format", "unknown format 'aac'"),
    (b'{"input": "   "}', 400, "input", "is empty"),
    (b'{"voice": "tara"}', 400, "input", "is required"),
    (b'{"input": "Hi.", "temperature": "hot"}', 400, "temperature", "must be a number"),
    (b'{"input": "Hi.", "seed": 1.5}', 400, "seed", "must be an integer"),
    (b'{"input": "Hi.", "speed": 2.0}', 400, "speed", "only 1.0 is supported"),
    (b'{"input": "Hi.", "speed": 9}', 400, "speed", "out of range"),
    (b'{"input": "Hi.", "stream_format": "ndjson"}', 400, "stream_format", "unknown value"),
    (b'{"input": "Hi.", "text": "Bye."}', 400, "input", "either input or text"),
    (json.dumps({"input": "x" * 201}).encode(), 400, "input", "the limit is 200"),
    (json.dumps({"input": "x" * 200_000}).encode(), 413, None, "limit"),
    (b'{"input": "Hi \\ud800 there."}', 400, "input", "is not valid Unicode"),  # a lone surrogate
    (b'{"input": "Hi.", "voice": "\\ud800"}', 400, "voice", "unknown voice"),
    (b'{"input": "Hi.", "\\udc00": 1}', 400, "\\udc00", "unrecognized request argument"),
    (b'{"input": "Hi.", "seed": ' + b"9" * 5000 + b"}", 400, "seed", "must be an integer"),
    (b'{"input": "Hi.", "ignore_end_of_speech": "yes"}', 400, "ignore_end_of_speech", "must be true or false"),
    (b'{"input": "Hi.", "temperature": -' + b"9" * 5000 + b"}", 400, "temperature", "must be a number"),
    (b'{"input": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, None, "nested too deeply"),
]


@pytest.mark.parametrize("body,status,param,message", BAD_BODIES, ids=[m for *_, m in BAD_BODIES])
async def test_bad_input_gets_a_4xx_naming_the_problem_and_admits_nothing(http_server, body, status, param, message):
    async with httpx.AsyncClient(base_url=http_server.url, timeout=30) as client:
        before = (await client.get("/v1/stats")).json()["scheduler"]["total_sessions"]
        response = await client.post("/v1/audio/speech", content=body, headers={"Content-Type": "application/json"})
        after = (await client.get("/v1/stats")).json()["scheduler"]["total_sessions"]
    error = response.json()["error"]
    assert response.status_code == status and message in error["message"]
    assert error["param"] == param and error["type"] and before == after


async def test_full_queue_gets_429_with_retry_after_and_the_admitted_stream_is_unaffected(start_http_server):
    server = start_http_server(**{"scheduler.max_concurrent_sessions": 1, "scheduler.max_pending_sessions": 0})
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/audio/speech", json={"input": "First in line.", "response_format": "pcm"}) as first:
            chunks = first.aiter_raw()
            head = await anext(chunks)  # the first session holds the only slot
            refused = await client.post("/v1/audio/speech", json={"input": "Second."})
            rest = b"".join([c async for c in chunks])
        stats = (await client.get("/v1/stats")).json()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.json()["error"]["message"] == ("server busy: the admission queue is full (0 requests wait for a "
                                                  "slot, at most 0 may); retry after 1 s")
    assert first.status_code == 200 and (len(head) + len(rest)) % (2 * orpheus.SAMPLES_PER_FRAME) == 0
    assert stats["scheduler"]["rejected_sessions"] == 1 and stats["scheduler"]["completed_sessions"] >= 1


async def test_a_client_that_leaves_while_queued_gives_up_its_place_at_once(start_http_server):
    server = start_http_server(**{"scheduler.max_concurrent_sessions": 1, "scheduler.max_pending_sessions": 4,
                                  "scheduler.max_queue_wait_s": 60})
    host, port = server.url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/audio/speech", json={"input": "First in line, and long enough to "
                                                                   "keep the only slot a while.",
                                                                   "response_format": "pcm"}) as first:
            chunks = first.aiter_raw()
            await anext(chunks)  # it holds the only slot
            body = json.dumps({"input": "Second.", "response_format": "pcm"}).encode()
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            for _ in range(100):
                if (await client.get("/v1/stats")).json()["scheduler"]["pending_sessions"] == 1:
                    break
                await asyncio.sleep(0.02)
            writer.close()  # the queued client hangs up
            for _ in range(100):
                stats = (await client.get("/v1/stats")).json()["scheduler"]
                if stats["pending_sessions"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert stats["pending_sessions"] == 0  # gone within two seconds, not after the queue's minute
            rest = b"".join([c async for c in chunks])
    assert first.status_code == 200 and rest


async def test_readyz_says_not_ready_until_warm_while_healthz_is_alive(start_http_server):
    server = start_http_server(load=False)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
        early = await client.post("/v1/audio/speech", json={"input": "Too early."})
        assert early.status_code == 503 and "loading" in early.json()["error"]["message"]
        await asyncio.to_thread(server.load)
        assert (await client.get("/readyz")).json() == {"ready": True}


async def test_stats_voices_and_metrics_endpoints(http_server):
    async with httpx.AsyncClient(base_url=http_server.url, timeout=30) as client:
        stats = (await client.get("/v1/stats")).json()
        voices = (await client.get("/v1/audio/voices")).json()
        metrics = await client.get("/metrics")
        port_metrics = httpx.get(http_server.metrics_url).text
    assert stats["ready"] and stats["scheduler"]["max_concurrent"] == 16
    assert stats["kv_cache"]["free_slots"] + stats["kv_cache"]["used_slots"] == 16
    assert {"total_tokens", "total_batches"} <= set(stats)
    assert [v["name"] for v in voices["voices"]] == list(orpheus.VOICES) and voices["default_voice"] == "tara"
    assert {"wav", "pcm", "flac", "mp3", "opus"} <= set(voices["response_formats"])
    names = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert {"orpheus_tts_ttfb_seconds", "orpheus_tts_requests"} <= names  # the same registry as the metrics port
    assert names == {f.name for f in text_string_to_metric_families(port_metrics)}


async def test_every_door_logs_the_engines_and_its_own_first_audio_time(http_server, caplog):
    """`ttfb_ms` (the session's start to its first audio, in the engine) and `sent_ms` (the request
    reaching the door's handler to that audio handed to the transport): what lies between them is
    the door's own share, for telling a slow door from a slow engine."""
    import re

    import grpc
    import websockets

    from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

    caplog.set_level("INFO", logger="orpheus_tts.api")
    async with grpc.aio.insecure_channel(http_server.address) as channel:
        responses = [r async for r in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb2.SynthesizeRequest(text="Hi there."))]
        assert responses[-1].HasField("metrics")
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        assert (await client.post("/v1/audio/speech", json={"input": "Hi there.", "response_format": "pcm"})).content
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"text": "Hi there."}))
        assert [m async for m in ws]
    logged = {}
    for _ in range(50):  # a door logs once its response has ended, which may trail the client's end
        logged = {method: (int(ttfb), int(sent)) for method, ttfb, sent in
                  re.findall(r"method=(\S+) .*? ttfb_ms=(\d+) sent_ms=(\d+)", caplog.text)}
        if len(logged) == 3:
            break
        await asyncio.sleep(0.05)
    assert set(logged) == {"Synthesize", "http_speech", "websocket_stream"}
    assert all(0 <= ttfb <= sent for ttfb, sent in logged.values()), logged
