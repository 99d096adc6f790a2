"""A browser page on another site cannot make a visitor's browser speak through the server (keys
off, the default settings): its WebSocket and its POSTs are refused by Origin, and a text/plain
POST (the kind a page may send without asking) is refused by content type."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets


async def test_a_websocket_from_another_origin_is_refused_and_the_servers_own_is_not(http_server):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(http_server.ws_url, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with websockets.connect(http_server.ws_url, origin=http_server.url) as ws:
        await ws.send(json.dumps({"text": "Hi."}))
        assert [m async for m in ws if isinstance(m, bytes)]


async def test_speech_wants_json_and_a_post_from_another_origin_is_refused(http_server):
    async with httpx.AsyncClient(base_url=http_server.url, timeout=60) as client:
        plain = await client.post("/v1/audio/speech", content=json.dumps({"input": "Hi."}),
                                  headers={"Content-Type": "text/plain"})
        missing = await client.post("/v1/audio/speech", content=json.dumps({"input": "Hi."}))
        elsewhere = await client.post("/v1/audio/speech", json={"input": "Hi."},
                                      headers={"Origin": "https://evil.example"})
        charset = await client.post("/v1/audio/speech", content=json.dumps({"input": "Hi.", "response_format": "pcm"}),
                                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert plain.status_code == missing.status_code == 415
    assert plain.json()["error"]["param"] == "Content-Type" and "text/plain" in plain.json()["error"]["message"]
    assert elsewhere.status_code == 403 and "evil.example" in elsewhere.json()["error"]["message"]
    assert charset.status_code == 200 and charset.content
