"""Streams that outlive the shutdown grace are ended by the server, each the way its format allows
(gRPC UNAVAILABLE, an SSE `error` event, WebSocket 1012, a raw body cut before its last chunk), and
logged as shutdowns with the audio they had sent: no "client went away", no error traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import grpc
import httpx
import pytest
import websockets

from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from server_testkit import RunningHttpServer, grpc_server_config

LONG_TEXT = "Keep talking for a while, please, there is a great deal to say about everything today. " * 2


async def test_streams_past_the_grace_end_in_band_and_are_logged_as_shutdowns(caplog):
    caplog.set_level(logging.INFO)
    server = RunningHttpServer(grpc_server_config())
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http, \
                grpc.aio.insecure_channel(server.address) as channel, \
                websockets.connect(server.ws_url) as ws:
            call = tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(tts_pb2.SynthesizeRequest(text=LONG_TEXT))
            raw = await http.send(http.build_request("POST", "/v1/audio/speech", json={
                "input": LONG_TEXT, "response_format": "pcm"}), stream=True)
            sse = await http.send(http.build_request("POST", "/v1/audio/speech", json={
                "input": LONG_TEXT, "response_format": "pcm", "stream_format": "sse"}), stream=True)
            await ws.send(json.dumps({"text": LONG_TEXT}))
            assert (await call.read()).HasField("format") and await ws.recv()
            raw_chunks, sse_lines = raw.aiter_raw(), sse.aiter_lines()
            raw_audio = len(await anext(raw_chunks))

            stopping = asyncio.create_task(asyncio.to_thread(server.run, server.server.stop(grace_s=0.3)))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while await call.read() is not grpc.aio.EOF:
                    pass
            with pytest.raises(httpx.RemoteProtocolError):  # the chunked body has no last chunk
                async for chunk in raw_chunks:
                    raw_audio += len(chunk)
            events = [json.loads(line[len("data: "):]) async for line in sse_lines if line.startswith("data: ")]
            with pytest.raises(websockets.exceptions.ConnectionClosedError):
                async for _ in ws:
                    pass
            await stopping
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "grace" in ended.value.details()
        assert raw_audio > 0
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "unavailable"
        assert "shutting down" in events[-1]["error"]["message"] and events[0]["type"] == "speech.audio.delta"
        assert ws.close_code == 1012 and "shutting down" in ws.close_reason
    finally:
        server.close()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    for method in ("Synthesize", "http_speech", "websocket_stream"):
        lines = [line for line in logged if f"method={method} " in line]
        assert lines and all("outcome=unavailable" in line for line in lines), (method, lines)
        assert all(float(re.search(r"audio_s=([\d.]+)", line)[1]) > 0 for line in lines), lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
    assert "went away" not in caplog.text
