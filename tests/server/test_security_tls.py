"""TLS and mutual TLS on a real server, with certificates made here: real gRPC, httpx and websockets
clients; plain text and wrong client certificates refused; a rotated certificate served to new
connections (and a half-written rotation ignored until it is whole)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time

import grpc
import httpx
import pytest
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orpheus_tts import cli
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from security_testkit import SecureServer, client_cert, make_ca, server_cert
from server_testkit import grpc_server_config

KEY = (("x-api-key", "tls-secret"),)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca("test CA"), make_ca("someone else's CA")
    server_cert(ca).write(root / "server.pem", root / "server.key")
    (root / "ca.pem").write_bytes(ca.cert)
    (root / "other-ca.pem").write_bytes(other_ca.cert)
    client_cert(ca).write(root / "client.pem", root / "client.key")
    client_cert(other_ca, "stranger").write(root / "stranger.pem", root / "stranger.key")
    return root, ca


@pytest.fixture(scope="module")
def server(pki):
    root, _ = pki
    config = grpc_server_config(**{
        "security.tls_cert_file": str(root / "server.pem"), "security.tls_key_file": str(root / "server.key"),
        "security.tls_client_ca_file": str(root / "ca.pem"), "security.open_probes": False})
    server = SecureServer(config, environ={"ORPHEUS_TTS_API_KEYS": "tls-caller:tls-secret"})
    yield server
    server.close()


def grpc_credentials(root, trust: str = "ca.pem", client: str | None = "client") -> grpc.ChannelCredentials:
    pair = {} if client is None else {"private_key": (root / f"{client}.key").read_bytes(),
                                      "certificate_chain": (root / f"{client}.pem").read_bytes()}
    return grpc.ssl_channel_credentials(root_certificates=(root / trust).read_bytes(), **pair)


def http_context(root, trust: str = "ca.pem", client: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=root / trust)
    if client is not None:
        context.load_cert_chain(root / f"{client}.pem", root / f"{client}.key")
    return context


async def grpc_health(server, credentials, metadata=KEY) -> int:
    async with grpc.aio.secure_channel(server.address, credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata,
                                                                timeout=10)
    return reply.status


async def http_status(server, context, path: str = "/readyz", key: str | None = "tls-secret") -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(verify=context, timeout=10) as client:
        return (await client.get(server.url + path, headers=headers)).status_code


async def test_clients_with_a_certificate_of_the_ca_are_served_on_every_door(server, pki):
    root, _ = pki
    async with grpc.aio.secure_channel(server.address, grpc_credentials(root)) as channel:
        audio = [r async for r in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb2.SynthesizeRequest(text="Hi."), metadata=KEY, timeout=60) if r.HasField("audio")]
    assert audio
    async with httpx.AsyncClient(verify=http_context(root), timeout=60) as client:
        speech = await client.post(server.url + "/v1/audio/speech", json={"input": "Hi.", "response_format": "pcm"},
                                   headers={"Authorization": "Bearer tls-secret"})
    assert speech.status_code == 200 and speech.content
    async with websockets.connect(server.ws_url, ssl=http_context(root),
                                  additional_headers={"Authorization": "Bearer tls-secret"}) as ws:
        await ws.send(json.dumps({"text": "Hi."}))
        assert [m async for m in ws if isinstance(m, bytes)]


async def test_plain_text_and_clients_without_the_cas_certificate_are_refused(server, pki):
    root, _ = pki
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=KEY, timeout=5)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(server.url.replace("https://", "http://") + "/readyz")
    for client in (None, "stranger"):  # no client certificate, one from another CA
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await grpc_health(server, grpc_credentials(root, client=client))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, client
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await http_status(server, http_context(root, client=client))


async def test_probes_need_a_key_when_open_probes_is_off(server, pki):
    root, _ = pki
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_health(server, grpc_credentials(root), metadata=())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await grpc_health(server, grpc_credentials(root)) == health_pb2.HealthCheckResponse.SERVING
    assert await http_status(server, http_context(root), key=None) == 401
    assert await http_status(server, http_context(root)) == 200


async def test_the_health_command_speaks_mutual_tls_with_a_key(server, pki, capsys):
    root, _ = pki
    tls = ["--tls-ca", str(root / "ca.pem"), "--tls-cert", str(root / "client.pem"), "--tls-key", str(root / "client.key"),
           "--tls-server-name", "localhost"]
    command = ["health", "--server", server.address, *tls]
    assert await asyncio.to_thread(cli.main, [*command, "--api-key", "tls-secret"]) == 0
    assert await asyncio.to_thread(cli.main, command) == 1  # open_probes is off: no key, no answer
    assert "UNAUTHENTICATED" in capsys.readouterr().err


async def test_a_rotated_certificate_is_served_to_new_connections(server, pki, caplog):
    root, _ = pki
    caplog.set_level(logging.WARNING, logger="orpheus_tts.tls")
    new_ca = make_ca("next year's CA")
    (root / "new-ca.pem").write_bytes(new_ca.cert)
    rotated = server_cert(new_ca)
    async with grpc.aio.secure_channel(server.address, grpc_credentials(root)) as before:  # stays connected
        stub = health_pb2_grpc.HealthStub(before)
        await stub.Check(health_pb2.HealthCheckRequest(), metadata=KEY, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await grpc_health(server, grpc_credentials(root, trust="new-ca.pem"))

        rotated.write(root / "server.pem")  # half-written: the new certificate with the old key
        await asyncio.sleep(1.3)
        assert await http_status(server, http_context(root)) == 200  # still the last good one
        assert await grpc_health(server, grpc_credentials(root)) == health_pb2.HealthCheckResponse.SERVING
        assert "cannot be used" in caplog.text

        (root / "server.key").write_bytes(rotated.key)  # now whole
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await http_status(server, http_context(root, trust="new-ca.pem")) == 200
                break
            except (httpx.TransportError, ssl.SSLError):
                assert time.monotonic() < deadline, "the rotated certificate was never served over HTTP"
                await asyncio.sleep(0.2)
        assert await grpc_health(server, grpc_credentials(root, trust="new-ca.pem")) == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):  # a new connection gets the new certificate only
            await grpc_health(server, grpc_credentials(root))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), metadata=KEY, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING  # the open connection goes on
