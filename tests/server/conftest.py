"""Shared fixtures: the demo model, and real gRPC and HTTP servers on loopback ports."""

import pytest
import torch

from orpheus_tts.model.loader import load_model
from server_testkit import RunningHttpServer, RunningServer, grpc_server_config


@pytest.fixture(scope="session")
def demo_model():
    return load_model("demo", torch.device("cpu"), torch.float32, max_positions=1024)


# -- gRPC server fixtures (test_grpc_*.py, test_metrics.py) ----------------------

@pytest.fixture(scope="session")
def grpc_server():
    """One warmed-up server shared by the gRPC tests; each test leaves every slot free."""
    server = RunningServer(grpc_server_config())
    yield server
    server.close()


@pytest.fixture
def start_grpc_server():
    """Start servers with their own configuration (`load=False`: ports bound, model not loaded)."""
    started = []

    def start(load: bool = True, **overrides) -> RunningServer:
        started.append(RunningServer(grpc_server_config(**overrides), load=load))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
async def tts(grpc_server):
    """A grpc.aio stub of the shared server's TextToSpeech service."""
    import grpc

    from orpheus_tts.api.gen import tts_pb2_grpc

    async with grpc.aio.insecure_channel(grpc_server.address) as channel:
        yield tts_pb2_grpc.TextToSpeechStub(channel)


# -- HTTP / WebSocket server fixtures (test_http_*.py, test_websocket*.py, test_openai*.py) --

@pytest.fixture(scope="session")
def http_server():
    """One warmed-up server (gRPC + HTTP) shared by the HTTP, WebSocket and OpenAI SDK tests."""
    server = RunningHttpServer(grpc_server_config())
    yield server
    server.close()


@pytest.fixture
def start_http_server():
    """Start HTTP servers with their own configuration (`load=False`: ports bound, model not loaded)."""
    started = []

    def start(load: bool = True, **overrides) -> RunningHttpServer:
        started.append(RunningHttpServer(grpc_server_config(**overrides), load=load))
        return started[-1]

    yield start
    for server in started:
        server.close()
