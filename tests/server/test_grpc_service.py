"""The service around the RPCs: health, reflection, generated code, and `orpheus-tts serve` / `say --server`."""

import socket
import subprocess
import sys
import time
import wave

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from orpheus_tts import orpheus
from orpheus_tts.api import protogen
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

SERVICE = "orpheus.tts.v1.TextToSpeech"


async def health_status(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return response.status


async def test_health_is_not_serving_until_the_model_is_warm(start_grpc_server):
    server = start_grpc_server(load=False)
    assert await health_status(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await health_status(server.address, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        call = stub.Synthesize(tts_pb2.SynthesizeRequest(text="Too early."))
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert not (await stub.GetStats(tts_pb2.GetStatsRequest())).ready
    server.load()
    assert await health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(server.address, SERVICE) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_service(grpc_server):
    async with grpc.aio.insecure_channel(grpc_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
        listed, described = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_generated_code_matches_the_proto(tmp_path):
    for fresh in protogen.generate(tmp_path):
        committed = protogen.REPO_ROOT / "server" / fresh.relative_to(tmp_path)
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed.name} is out of date: run `make proto`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_then_say_with_server_writes_a_24khz_wav(tmp_path):
    port, metrics_port = free_port(), free_port()
    cli = [sys.executable, "-m", "orpheus_tts.cli"]
    serve = subprocess.Popen(
        [*cli, "serve", "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", str(metrics_port),
         "--device", "cpu", "--set", "scheduler.max_concurrent_sessions=2", "--set", "scheduler.max_context_tokens=512"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                assert serve.poll() is None, serve.stdout.read()
                time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING
        out = tmp_path / "x.wav"
        say = subprocess.run([*cli, "say", "Hello world.", "--server", f"127.0.0.1:{port}", "-o", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert say.returncode == 0, say.stderr
        assert "TTFB" in say.stdout and "real-time factor" in say.stdout
        with wave.open(str(out)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            assert w.getnframes() > 0 and w.getnframes() % orpheus.SAMPLES_PER_FRAME == 0
    finally:
        serve.terminate()
        output, _ = serve.communicate(timeout=30)
    assert serve.returncode == 0, output
    assert "method=Synthesize" in output and "outcome=ok" in output  # the request's log line
