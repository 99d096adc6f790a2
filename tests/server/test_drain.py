"""SIGTERM on a real `orpheus-tts serve` process with streams in flight: the listeners stay up for
the grace, so probes say "draining" and new requests get a clear 503 / UNAVAILABLE, while a WebSocket stream
and an HTTP stream both finish their audio; then the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import grpc
import httpx
import pytest
import websockets

from orpheus_tts import orpheus
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

LONG_TEXT = "Keep talking for a while, please, there is a lot to say today. " * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert process.poll() is None, "the server exited before it was ready"
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the server never became ready")


async def test_sigterm_drains_websocket_and_http_streams_while_probes_say_draining(tmp_path):
    http_port, grpc_port = free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "orpheus_tts.cli", "serve", "--device", "cpu", "--host", "127.0.0.1",
         "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "0", "--grace-s", "60",
         "--set", "scheduler.max_context_tokens=1024"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        await wait_ready(url, process)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client, \
                websockets.connect(f"ws://127.0.0.1:{http_port}/v1/audio/stream") as ws:
            await ws.send(json.dumps({"text": LONG_TEXT}))
            first_ws = await ws.recv()
            async with client.stream("POST", "/v1/audio/speech",
                                     json={"input": LONG_TEXT, "response_format": "pcm"}) as speech:
                chunks = speech.aiter_raw()
                first_http = await anext(chunks)
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                ready = await client.get("/readyz")
                alive = await client.get("/healthz")
                refused = await client.post("/v1/audio/speech", json={"input": "Too late."})
                async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                    stub = tts_pb2_grpc.TextToSpeechStub(channel)
                    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                        async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Too late.")):
                            pass
                rest_http = b"".join([chunk async for chunk in chunks])
            audio, done = [first_ws], None
            async for message in ws:
                if isinstance(message, bytes):
                    audio.append(message)
                else:
                    done = json.loads(message)
            close_code = ws.close_code
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert alive.status_code == 200
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in unavailable.value.details()
        assert speech.status_code == 200
        assert (len(first_http) + len(rest_http)) % (2 * orpheus.SAMPLES_PER_FRAME) == 0
        assert done is not None and done["done"] is True and close_code == 1000
        assert sum(len(a) for a in audio) % (2 * orpheus.SAMPLES_PER_FRAME) == 0
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert "grace of" not in (tmp_path / "serve.log").read_text()  # nothing was cut at the end of the grace
