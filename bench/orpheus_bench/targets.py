"""Where `orpheus-tts bench` sends its streams: a server's gRPC, HTTP or WebSocket door, or the
engine in this process; each turns one stream into a `StreamResult` as its client saw it."""

from __future__ import annotations

import asyncio

from orpheus_bench.load import StreamResult, Timeline, hang_up_after
from orpheus_bench.lora_adapters import NAME
from orpheus_tts.orpheus import FRAME_SECONDS, SAMPLE_RATE_HZ, TOKENS_PER_FRAME


class GrpcTarget:
    """Streams over the server's gRPC `Synthesize` (PCM16, so audio length is exact)."""

    api = "grpc"

    def __init__(self, address: str, timeout_s: float, ignore_eos: bool = True, adapters: int = 0,
                 api_key: str | None = None):
        self.address, self.timeout_s, self.ignore_eos, self.adapters = address, timeout_s, ignore_eos, adapters
        self.metadata = tuple((name.lower(), value) for name, value in bearer(api_key).items())  # gRPC: lower case
        self.channel = None

    async def __aenter__(self):
        import grpc

        self.channel = grpc.aio.insecure_channel(self.address)
        await asyncio.wait_for(self.channel.channel_ready(), self.timeout_s)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()

    async def stream(self, text: str, seed: int, cancel_after_s: float | None = None) -> StreamResult:
        import grpc

        from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

        request = tts_pb2.SynthesizeRequest(text=text, seed=seed, encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE,
                                            ignore_end_of_speech=self.ignore_eos,
                                            adapter=adapter_for(seed, self.adapters) or "")
        timeline, end = Timeline(), {}

        async def consume() -> StreamResult:
            try:
                call = tts_pb2_grpc.TextToSpeechStub(self.channel).Synthesize(request, timeout=self.timeout_s,
                                                                               metadata=self.metadata)
                async for response in call:
                    if response.HasField("audio"):
                        timeline.chunk(len(response.audio.data) / 2 / SAMPLE_RATE_HZ)
                    elif response.HasField("metrics"):
                        end.update(tokens=int(response.metrics.tokens), queue_ms=response.metrics.queue_ms)
            except grpc.RpcError as exc:
                refused = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return timeline.result(False, 0, f"{exc.code().name}: {exc.details()}", refused=refused)
            return timeline.ended(end)

        return await hang_up_after(consume(), cancel_after_s, timeline)


def bearer(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def adapter_for(seed: int, adapters: int) -> str | None:
    """With `--adapters N`, each stream's adapter (`lora_adapters` writes bench-0 ... bench-{N-1}):
    by its seed, so every door and every run gives a stream the same one."""
    return NAME.format(seed % adapters) if adapters else None


def _speech_body(text: str, seed: int, ignore_eos: bool, adapters: int) -> dict:
    """The HTTP and WebSocket request: OpenAI's fields, PCM16 (so audio length is exact); the
    adapter, if any, as OpenAI's `model`."""
    body = {"model": adapter_for(seed, adapters) or "orpheus", "input": text, "response_format": "pcm", "seed": seed}
    if ignore_eos:
        body["ignore_end_of_speech"] = True
    return body


class HttpTarget:
    """Streams over `POST /v1/audio/speech` (OpenAI's request, raw PCM16 streamed), one pooled
    HTTP/1.1 client as an application would hold; TTFB is the first body bytes."""

    api = "http"
    def __init__(self, address: str, timeout_s: float, ignore_eos: bool = True, adapters: int = 0,
                 api_key: str | None = None):
        self.url, self.timeout_s, self.ignore_eos, self.adapters = f"http://{address}", timeout_s, ignore_eos, adapters
        self.headers = bearer(api_key)
        self.client = None

    async def __aenter__(self):
        import httpx

        self.client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, headers=self.headers,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024))
        await self.client.get("/readyz")
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()

    async def stream(self, text: str, seed: int, cancel_after_s: float | None = None) -> StreamResult:
        import httpx

        timeline = Timeline()

        async def consume() -> StreamResult:
            try:
                async with self.client.stream("POST", "/v1/audio/speech",
                                              json=_speech_body(text, seed, self.ignore_eos, self.adapters)) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:200]
                        return timeline.result(False, 0, f"HTTP {response.status_code}: {detail}",
                                               refused=response.status_code == 429)
                    async for data in response.aiter_raw():
                        timeline.chunk(len(data) / 2 / SAMPLE_RATE_HZ)
            except httpx.HTTPError as exc:
                return timeline.result(False, 0, f"{type(exc).__name__}: {exc}")
            return timeline.result(True, _tokens_in(timeline.audio_s))

        return await hang_up_after(consume(), cancel_after_s, timeline)


class WebSocketTarget:
    """Streams over `WS /v1/audio/stream`: the request as one JSON message, binary PCM16 frames
    back, then the `done` message with the server's metrics."""

    api = "websocket"
    def __init__(self, address: str, timeout_s: float, ignore_eos: bool = True, adapters: int = 0,
                 api_key: str | None = None):
        self.url, self.timeout_s, self.ignore_eos = f"ws://{address}/v1/audio/stream", timeout_s, ignore_eos
        self.adapters, self.headers = adapters, bearer(api_key)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def stream(self, text: str, seed: int, cancel_after_s: float | None = None) -> StreamResult:
        import json

        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        timeline, end = Timeline(), {}

        async def consume() -> StreamResult:
            try:
                async with connect(self.url, open_timeout=self.timeout_s, max_size=None,
                                   additional_headers=self.headers) as ws:
                    await ws.send(json.dumps(_speech_body(text, seed, self.ignore_eos, self.adapters)))
                    async for message in ws:
                        if isinstance(message, bytes):
                            timeline.chunk(len(message) / 2 / SAMPLE_RATE_HZ)
                            continue
                        reply = json.loads(message)
                        if "error" in reply:
                            end["error"] = reply["error"].get("message", str(reply["error"]))
                        elif reply.get("done"):
                            end.update(tokens=reply["metrics"]["tokens"], queue_ms=reply["metrics"]["queue_ms"])
            except ConnectionClosed as exc:  # a close other than 1000: 1013 is a refusal (busy, at capacity)
                code = exc.rcvd.code if exc.rcvd is not None else None
                return timeline.result(False, 0, f"close {code}: {end.get('error') or exc}", refused=code == 1013)
            except OSError as exc:
                return timeline.result(False, 0, f"{type(exc).__name__}: {exc}")
            if "error" in end:
                refused = ws.close_code == 1013
                return timeline.result(False, 0, f"close {ws.close_code}: {end['error']}", refused=refused)
            return timeline.ended(end)

        return await hang_up_after(consume(), cancel_after_s, timeline)


def _tokens_in(audio_s: float) -> int:
    """Raw PCM carries no metrics: the audio tokens its frames took."""
    return round(audio_s / FRAME_SECONDS) * TOKENS_PER_FRAME


class EngineTarget:
    """The engine in this process: no network in the way."""

    def __init__(self, config, ignore_eos: bool = True, adapters: int = 0):
        self.config, self.ignore_eos, self.adapters = config, ignore_eos, adapters
        self.engine = None

    async def __aenter__(self):
        from orpheus_bench.server_parts import Engine

        self.engine = Engine.from_config(self.config).start()
        await asyncio.to_thread(self.engine.warm_up)
        return self

    async def __aexit__(self, *exc):
        self.engine.stop()

    async def stream(self, text: str, seed: int, cancel_after_s: float | None = None) -> StreamResult:
        from orpheus_bench.server_parts import AudioChunk, Outcome
        from orpheus_tts.errors import BusyError

        timeline = Timeline()

        async def consume() -> StreamResult:
            end = None
            try:
                request = self.engine.make_request(text, seed=seed, ignore_end_of_speech=self.ignore_eos,
                                                   adapter=adapter_for(seed, self.adapters))
                async for event in self.engine.synthesize(request):
                    if isinstance(event, AudioChunk):
                        timeline.chunk(len(event.samples) / SAMPLE_RATE_HZ)
                    else:
                        end = event
            except Exception as exc:  # a refusal (queue full, at capacity) or bad text
                return timeline.result(False, 0, f"{type(exc).__name__}: {exc}", refused=isinstance(exc, BusyError))
            if end is None:
                return timeline.result(False, 0, "stream ended without a result")
            ok = end.outcome is Outcome.OK
            queue_ms = None if end.metrics.queue_s is None else end.metrics.queue_s * 1e3
            return timeline.result(ok, end.metrics.tokens, None if ok else f"{end.outcome.value}: {end.error}",
                                   refused=end.outcome is Outcome.REFUSED, queue_ms=queue_ms)

        return await hang_up_after(consume(), cancel_after_s, timeline)
