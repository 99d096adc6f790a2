"""API keys and per-key limits through every door of a real server: gRPC, HTTP, WebSocket and the
OpenAI SDK; the keys file laid out as a Kubernetes Secret volume (symlinks) and swapped while serving."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import grpc
import httpx
import openai
import pytest
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orpheus_tts.api.access import KeyRing, parse_keys
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.config import ConfigError, SecurityConfig, load_config
from security_testkit import SecureServer
from server_testkit import grpc_server_config

KEYS = """# the test server's callers
alice:alice-secret
bob:bob-secret

bare-secret-on-line-5
rate:rate-secret
sess:sess-secret
doomed:doomed-secret
"""
LONG_TEXT = "Keep talking for a while, please, there is a great deal to say about everything today. " * 2


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


class SecretVolume:
    """A directory laid out as Kubernetes mounts a Secret: `keys -> ..data/keys`, `..data -> ..<version>`,
    updated by swapping the `..data` link."""

    def __init__(self, root):
        self.root = root
        self.version = 0
        self.write(KEYS)
        os.symlink("..data/keys", root / "keys")

    @property
    def path(self) -> str:
        return str(self.root / "keys")

    def write(self, text: str | None) -> None:
        self.version += 1
        target = self.root / f"..v{self.version}"
        target.mkdir()
        if text is not None:  # None: the new version lacks the file (unreadable through the link)
            (target / "keys").write_text(text)
        os.symlink(target.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    return SecretVolume(tmp_path_factory.mktemp("secret"))


@pytest.fixture(scope="module")
def server(volume):
    config = grpc_server_config(**{
        "security.api_keys_file": volume.path, "security.max_sessions_per_key": 1,
        "security.requests_per_s_per_key": 2, "security.burst_per_key": 12,
        "security.allowed_origins": ["https://app.example"]})
    server = SecureServer(config, environ={"ORPHEUS_TTS_API_KEYS": "env-caller:env-secret"})
    yield server
    server.close()


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel


async def synthesize(channel, metadata, text: str = "Hi.", timeout: float = 60) -> int:
    """Audio bytes of one Synthesize call."""
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    audio = 0
    async for response in stub.Synthesize(tts_pb2.SynthesizeRequest(text=text), metadata=metadata, timeout=timeout):
        audio += len(response.audio.data)
    return audio


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- who may call ---------------------------------------------------------------------------------

async def test_requests_without_a_known_key_are_refused_with_the_same_words(server, http, channel):
    missing = await http.get("/v1/audio/voices")
    wrong = await http.get("/v1/audio/voices", headers=bearer("alice-secreT"))
    speech = await http.post("/v1/audio/speech", json={"input": "Hi."}, headers={"Authorization": "Basic abc"})
    for response in (missing, wrong, speech):
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert missing.json() == wrong.json() == speech.json()
    assert "alice" not in wrong.text
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    details = set()
    for metadata in ((), (("authorization", "Bearer nope"),), (("x-api-key", "bob-secre"),)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListVoices(tts_pb2.ListVoicesRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details.add(refused.value.details())
    assert len(details) == 1
    async with websockets.connect(server.ws_url) as ws:
        error = json.loads(await ws.recv())
        await ws.wait_closed()
    assert error["error"]["code"] == "invalid_api_key" and ws.close_code == 1008 and "API key" in ws.close_reason


async def test_probes_stay_open_without_a_key(server, http, channel):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await http.get(path)).status_code == 200, path
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_every_door_takes_its_key(server, http, channel):
    assert (await http.get("/v1/audio/voices", headers=bearer("alice-secret"))).status_code == 200
    speech = await http.post("/v1/audio/speech", json={"input": "Hi.", "response_format": "pcm"},
                             headers=bearer("env-secret"))
    assert speech.status_code == 200 and speech.content
    assert await synthesize(channel, (("authorization", "Bearer bob-secret"),)) > 0
    assert await synthesize(channel, (("x-api-key", "bare-secret-on-line-5"),)) > 0
    async with websockets.connect(server.ws_url, additional_headers=bearer("alice-secret")) as ws:
        await ws.send(json.dumps({"text": "Hi."}))
        header_audio = [m async for m in ws if isinstance(m, bytes)]
    # A browser cannot set headers on a WebSocket: it offers the key as a subprotocol.
    async with websockets.connect(server.ws_url, subprotocols=["orpheus-tts.v1", "bearer.bob-secret"]) as ws:
        chosen = ws.subprotocol
        await ws.send(json.dumps({"text": "Hi."}))
        protocol_audio = [m async for m in ws if isinstance(m, bytes)]
    assert header_audio and protocol_audio and chosen == "orpheus-tts.v1"
    metrics = (await http.get("/metrics")).text
    assert 'orpheus_tts_key_requests_total{key="key-5",outcome="accepted"} 1.0' in metrics  # a bare key's name
    assert 'orpheus_tts_key_requests_total{key="env-caller",outcome="accepted"} 1.0' in metrics


def test_openai_sdk_sends_its_api_key(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="bob-secret", max_retries=0, timeout=60)
    assert client.audio.speech.create(model="tts-1", voice="tara", input="Hi.", response_format="pcm").content
    stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key="guess", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.audio.speech.create(model="tts-1", voice="tara", input="Hi.")
    assert refused.value.status_code == 401


async def test_metrics_and_logs_name_keys_but_never_show_them(server, http, channel, caplog):
    caplog.set_level(logging.INFO, logger="orpheus_tts")
    assert await synthesize(channel, (("x-api-key", "alice-secret"),)) > 0
    await http.get("/v1/audio/voices", headers=bearer("wrong-secret"))
    metrics = (await http.get("/metrics")).text
    assert 'orpheus_tts_key_requests_total{key="alice",outcome="accepted"}' in metrics
    assert 'orpheus_tts_unauthenticated_requests_total{protocol="http"}' in metrics
    assert "secret" not in metrics
    assert any("method=Synthesize key=alice" in r.getMessage() for r in caplog.records)
    assert "secret" not in caplog.text


# -- per-key limits -------------------------------------------------------------------------------

async def test_a_key_over_its_request_rate_is_refused_with_retry_after(server, http, channel):
    admitted, refused = 0, None
    while refused is None and admitted < 20:
        response = await http.get("/v1/audio/voices", headers=bearer("rate-secret"))
        if response.status_code == 200:
            admitted += 1
        else:
            refused = response
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:  # a token comes back every 0.5 s
        await tts_pb2_grpc.TextToSpeechStub(channel).ListVoices(tts_pb2.ListVoicesRequest(),
                                                                metadata=(("x-api-key", "rate-secret"),))
    assert 12 <= admitted <= 14  # the burst, and what came back while it was spent
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "key_rate" and "2 requests/s" in refused.json()["error"]["message"]
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(exhausted.value.trailing_metadata())["retry-after"] == "1"
    assert (await http.get("/v1/audio/voices", headers=bearer("bob-secret"))).status_code == 200  # others go on
    await asyncio.sleep(0.6)  # a token is back
    assert (await http.get("/v1/audio/voices", headers=bearer("rate-secret"))).status_code == 200
    assert 'orpheus_tts_refused_requests_total{reason="key_rate"}' in (await http.get("/metrics")).text


async def test_a_key_with_its_sessions_open_is_refused_and_each_ending_frees_its_slot(server, http, channel):
    access, sess = server.server.access, (("x-api-key", "sess-secret"),)
    stub = tts_pb2_grpc.TextToSpeechStub(channel)

    # An idle StreamingSynthesize (config, no text) holds the key's one session.
    config = tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(voice="tara"))
    idle = stub.StreamingSynthesize(metadata=sess)
    await idle.write(config)
    await wait_until(lambda: access.open_sessions("sess") == 1)
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await synthesize(channel, sess)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(exhausted.value.trailing_metadata())["retry-after"] == "1"
    assert "sess already has 1 speech streams open" in exhausted.value.details()
    busy = await http.post("/v1/audio/speech", json={"input": "Hi."}, headers=bearer("sess-secret"))
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "key_sessions" and busy.headers["retry-after"]
    async with websockets.connect(server.ws_url, additional_headers=bearer("sess-secret")) as ws:
        await ws.wait_closed()
    assert ws.close_code == 1013
    assert await synthesize(channel, (("x-api-key", "bob-secret"),)) > 0  # another key is not held back
    assert (await http.get("/v1/audio/voices", headers=bearer("sess-secret"))).status_code == 200  # not a stream

    idle.cancel()  # cancelled by the client
    await wait_until(lambda: access.open_sessions("sess") == 0)

    with pytest.raises(grpc.aio.AioRpcError) as expired:  # past its deadline
        await synthesize(channel, sess, LONG_TEXT, timeout=0.3)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: access.open_sessions("sess") == 0)

    bad = stub.StreamingSynthesize(metadata=sess)  # ended by an error
    await bad.write(tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesisConfig(voice="nobody")))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await bad.read()
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_until(lambda: access.open_sessions("sess") == 0)

    async with http.stream("POST", "/v1/audio/speech", json={"input": LONG_TEXT, "response_format": "pcm"},
                           headers=bearer("sess-secret")) as response:  # the HTTP client leaves mid-stream
        assert response.status_code == 200
        await anext(response.aiter_raw())
        assert access.open_sessions("sess") == 1
    await wait_until(lambda: access.open_sessions("sess") == 0)

    async with websockets.connect(server.ws_url, additional_headers=bearer("sess-secret")) as ws:  # finished
        await ws.send(json.dumps({"text": "Hi."}))
        assert [m async for m in ws if not isinstance(m, bytes)][-1].startswith('{"done": true')
    await wait_until(lambda: access.open_sessions("sess") == 0)
    assert 'orpheus_tts_key_requests_total{key="sess",outcome="key_sessions"} 3.0' in (await http.get("/metrics")).text


# -- origins --------------------------------------------------------------------------------------

async def test_an_allowed_origin_gets_cors_answers_and_others_are_refused(server, http):
    preflight = await http.options("/v1/audio/speech", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    page = await http.get("/v1/audio/voices", headers={"Origin": "https://app.example", **bearer("alice-secret")})
    assert page.status_code == 200 and page.headers["access-control-allow-origin"] == "https://app.example"
    elsewhere = await http.get("/v1/audio/voices", headers={"Origin": "https://evil.example", **bearer("alice-secret")})
    assert elsewhere.status_code == 403 and elsewhere.json()["error"]["code"] == "origin_not_allowed"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(server.ws_url, origin="https://evil.example",
                                      additional_headers=bearer("alice-secret")):
            pass
    assert refused.value.response.status_code == 403
    async with websockets.connect(server.ws_url, origin="https://app.example",
                                  subprotocols=["orpheus-tts.v1", "bearer.alice-secret"]) as ws:
        await ws.send(json.dumps({"text": "Hi."}))
        assert [m async for m in ws if isinstance(m, bytes)]


# -- the keys file --------------------------------------------------------------------------------

async def test_the_keys_file_is_read_again_when_the_secret_is_swapped(server, volume, http, caplog):
    async def status(key: str) -> int:
        return (await http.get("/v1/audio/voices", headers=bearer(key))).status_code

    assert await status("doomed-secret") == 200
    volume.write(KEYS.replace("doomed:doomed-secret", "zed:zed-secret"))
    deadline = time.monotonic() + 5
    while await status("zed-secret") != 200:
        assert time.monotonic() < deadline, "the new key was never read"
        await asyncio.sleep(0.2)
    assert await status("doomed-secret") == 401 and await status("env-secret") == 200
    caplog.set_level(logging.WARNING, logger="orpheus_tts.access")
    for broken in ("# all keys gone\n", None):  # emptied, then the file gone from the new version
        volume.write(broken)
        await asyncio.sleep(1.2)
        assert await status("zed-secret") == 200  # the last good keys are kept
    assert "holds no keys" in caplog.text and "cannot be read" in caplog.text


# -- settings -------------------------------------------------------------------------------------

def test_keys_parse_by_name_and_bad_entries_are_skipped_without_showing_them(caplog):
    keys = parse_keys(["# c", "", "a:one", "two", "bad name:three", "b:", " c : four "], "test")
    assert [(k.name, k.secret) for k in keys] == [("a", b"one"), ("key-4", b"two"), ("c", b"four")]
    assert "three" not in caplog.text and "entry 5" in caplog.text and "one" not in repr(keys)


def test_a_keys_file_without_keys_stops_the_start(tmp_path):
    with pytest.raises(ConfigError, match="api_keys_file"):
        KeyRing.from_config(SecurityConfig(api_keys_file=str(tmp_path / "missing")), {})
    assert KeyRing.from_config(SecurityConfig(api_keys_file=str(tmp_path / "missing")),
                               {"ORPHEUS_TTS_API_KEYS": "a:b"}).names() == ["a"]


def test_security_settings_are_checked():
    with pytest.raises(ConfigError, match="tls_key_file"):
        load_config(overrides={"security.tls_cert_file": "/c.pem"}, environ={})
    with pytest.raises(ConfigError, match="allowed_origins"):
        load_config(overrides={"security.allowed_origins": ["app.example"]}, environ={})
    config = load_config(overrides={"security.allowed_origins": "https://a.example,https://b.example"}, environ={})
    assert config.security.allowed_origins == ["https://a.example", "https://b.example"]
