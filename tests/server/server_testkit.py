"""Helpers shared by the server tests: small configurations and real servers on loopback.

A module of its own (not conftest.py) so test files can import it by a unique name.
"""

import asyncio
import threading

import torch

from orpheus_tts import orpheus
from orpheus_tts.config import load_config


def small_config(**overrides):
    """Engine config for tests: CPU, short contexts, short texts, deterministic codec and chunk
    joins (a slow CPU step would otherwise send every chunk frame by frame), and a long queue
    bound: on a slow machine a queued session waits past the default 2 s for a CPU stream to
    finish; tests of refusal set `scheduler.max_queue_wait_s` themselves."""
    base = {
        "model.device": "cpu",
        "codec.device": "cpu",
        "codec.noise": False,
        "scheduler.adaptive_chunks": False,
        "scheduler.max_context_tokens": 1024,
        "scheduler.max_concurrent_sessions": 4,
        "scheduler.max_batch_size": 4,
        "scheduler.max_queue_wait_s": 60.0,
    }
    base.update(overrides)
    return load_config(overrides=base, environ={})


class RunningServer:
    """A real OrpheusServer on a loopback port, on its own event loop in a background thread.

    Tests talk to it with real gRPC clients on their own loops (or from subprocesses).
    """

    def __init__(self, config, load: bool = True, **server_options):
        from orpheus_tts.api.server import OrpheusServer

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.server = OrpheusServer(config, host="127.0.0.1", grpc_port=0, metrics_port=0, **server_options)
        self.run(self.server.start())
        if load:
            self.load()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def load(self) -> None:
        self.run(self.server.load())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def close(self) -> None:
        self.run(self.server.stop(grace_s=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def grpc_server_config(**overrides):
    """Small and quick: 16 slots, short contexts, texts of at most 200 characters."""
    base = {
        "scheduler.max_concurrent_sessions": 16,
        "scheduler.max_batch_size": 16,
        "scheduler.max_context_tokens": 512,
        "tuning.longform.max_text_chars": 200,
    }
    base.update(overrides)
    return small_config(**base)


class RunningHttpServer(RunningServer):
    """A RunningServer that also serves HTTP and WebSocket on a loopback port."""

    def __init__(self, config, load: bool = True, idle_timeout_s: float = 1.0):
        from orpheus_tts.api.http import HttpSettings

        super().__init__(config, load, http_port=0, http_settings=HttpSettings(idle_timeout_s=idle_timeout_s))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.http_port}/v1/audio/stream"


def teach_to_stop(model, strength: float = 0.7) -> None:
    """End-of-speech becomes likely after each whole frame, never before the first."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(model.tok_embeddings.weight.shape[1], generator=generator)
        direction /= direction.norm()
        last_position = orpheus.AUDIO_TOKEN_BASE + 6 * orpheus.CODEBOOK_SIZE
        model.tok_embeddings.weight[last_position:last_position + orpheus.CODEBOOK_SIZE] += 0.5 * direction
        model.output.weight[orpheus.END_OF_SPEECH] = strength * direction
