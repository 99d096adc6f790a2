"""`WS /v1/audio/stream` with the `websockets` client: the seed's example, streamed text, bad clients."""

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from orpheus_tts import orpheus

FRAME_BYTES = orpheus.SAMPLES_PER_FRAME * 2


async def receive_all(ws) -> tuple[bytes, list[dict]]:
    audio, messages = bytearray(), []
    try:
        async for message in ws:
            if isinstance(message, bytes):
                audio += message
            else:
                messages.append(json.loads(message))
    except ConnectionClosed:
        pass
    return bytes(audio), messages


async def test_the_seeds_example_gets_audio_then_done_with_ttfb(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"text": "Hello!", "voice": "tara"}))
        audio, messages = await receive_all(ws)
        assert ws.close_code == 1000
    assert messages[-1]["done"] is True and messages[-1]["metrics"]["ttfb_ms"] > 0
    assert len(audio) == messages[-1]["metrics"]["frames"] * FRAME_BYTES > 0


async def test_audio_frames_go_uncompressed_even_to_a_client_that_offers_deflate(http_server):
    """PCM barely compresses and deflating it costs the event loop ~0.4 ms a chunk: the server
    declines permessage-deflate, which the websockets client offers by default."""
    async with websockets.connect(http_server.ws_url) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers and ws.protocol.extensions == []
        await ws.send(json.dumps({"text": "Hello!"}))
        audio, messages = await receive_all(ws)
    assert messages[-1]["done"] and len(audio) == messages[-1]["metrics"]["frames"] * FRAME_BYTES


async def test_text_in_pieces_is_spoken_before_the_end_message(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"voice": "leo", "streaming_text": True, "seed": 4}))
        await ws.send(json.dumps({"text": "The first sentence is ready. And the sec"}))
        first = await asyncio.wait_for(ws.recv(), timeout=30)
        assert isinstance(first, bytes)  # audio before the text has ended
        await ws.send(json.dumps({"text": "ond one ends here.", "end": True}))
        audio, messages = await receive_all(ws)
    metrics = messages[-1]["metrics"]
    assert messages[-1]["done"] and metrics["text_pieces"] >= 2
    assert len(first) + len(audio) == metrics["frames"] * FRAME_BYTES


async def test_wav_over_websocket_starts_with_the_header(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"input": "Hi.", "response_format": "wav"}))
        audio, messages = await receive_all(ws)
    assert audio[:4] == b"RIFF" and len(audio) - 44 == messages[-1]["metrics"]["frames"] * FRAME_BYTES


BAD_CLIENTS = [
    ("not json", 1007, "malformed JSON"),
    ('["a list"]', 1007, "JSON object"),
    (b"\x00\x01binary", 1003, "binary messages"),
    ('{"text": "Hi.", "voice": "alloy"}', 1008, "unknown voice"),
    ('{"text": "Hi.", "pitch": 2}', 1008, "unrecognized request argument"),
    ('{"text": ""}', 1008, "is empty"),
    ('{"text": "x", "streaming_text": "yes"}', 1008, "must be true or false"),
    ('{"text": "Hi \\ud800 there."}', 1007, "text: is not valid Unicode"),  # a lone surrogate
    (None, 1008, "no request within"),  # a silent client
]


@pytest.mark.parametrize("message,code,text", BAD_CLIENTS, ids=[t for *_, t in BAD_CLIENTS])
async def test_bad_or_silent_clients_get_an_error_message_and_a_close_code(http_server, message, code, text):
    async with websockets.connect(http_server.ws_url) as ws:
        if message is not None:
            await ws.send(message)
        audio, messages = await asyncio.wait_for(receive_all(ws), timeout=10)
    assert audio == b"" and text in messages[-1]["error"]["message"]
    assert ws.close_code == code


async def test_a_client_that_goes_silent_mid_text_is_closed_and_its_slot_freed(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"streaming_text": True}))
        await ws.send(json.dumps({"text": "A sentence that is never"}))
        audio, messages = await asyncio.wait_for(receive_all(ws), timeout=10)
    assert ws.close_code == 1008 and "no text or end message within" in messages[-1]["error"]["message"]
    await asyncio.sleep(0.2)
    async with websockets.connect(http_server.ws_url) as ws:  # others are unaffected
        await ws.send(json.dumps({"text": "Still here."}))
        _, messages = await receive_all(ws)
    assert messages[-1]["done"]


async def test_a_lone_surrogate_in_streamed_text_closes_with_invalid_payload_data(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"streaming_text": True}))
        await ws.send(json.dumps({"text": "Fine so far. And then \ud800"}))
        _, messages = await asyncio.wait_for(receive_all(ws), timeout=10)
    assert ws.close_code == 1007 and "is not valid Unicode" in messages[-1]["error"]["message"]


async def test_a_client_that_leaves_mid_stream_frees_its_slot(http_server):
    async with websockets.connect(http_server.ws_url) as ws:
        await ws.send(json.dumps({"text": "This will be cut off by the client leaving early."}))
        assert isinstance(await ws.recv(), bytes)
    for _ in range(100):
        stats = http_server.server.engine.stats()
        if stats.free_slots == stats.max_concurrent:
            break
        await asyncio.sleep(0.05)
    assert stats.free_slots == stats.max_concurrent
