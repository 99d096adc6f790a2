"""A 5,000-character text over HTTP: every piece spoken, in order, in one stream, with no click at a join.

The demo model never stops on its own, which would make 5,000 characters minutes of CPU
work. The test teaches it to stop: the end-of-speech output row points along a direction
that the last audio token of each frame carries, so each piece ends after a few frames, as
a trained model ends each sentence. Code is untouched; only the demo weights change.
"""

import base64
import json

import grpc
import httpx
import numpy as np
import pytest

from orpheus_tts import orpheus
from audio_measures import join_steps, typical_step
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from server_testkit import RunningHttpServer, grpc_server_config, teach_to_stop

WORDS = "The quick brown fox jumps over the lazy dog near the river bank today."
TEXT = " ".join(f"Sentence number {i} says: {WORDS}" for i in range(100))[:5000]
SEED = 1


@pytest.fixture(scope="module")
def long_text_server():
    server = RunningHttpServer(grpc_server_config(**{"scheduler.max_context_tokens": 1024,
                                                     "tuning.longform.max_text_chars": 5000}))
    teach_to_stop(server.server.engine.runner.model)
    yield server
    server.close()


async def grpc_chunks(server) -> list[tts_pb2.AudioChunk]:
    """The same request over gRPC, which labels each chunk with its text piece (and does not smooth joins)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        request = tts_pb2.SynthesizeRequest(text=TEXT, seed=SEED)
        return [r.audio async for r in stub.Synthesize(request, timeout=120) if r.HasField("audio")]


async def test_five_thousand_characters_come_out_whole_with_smooth_joins(long_text_server):
    assert len(TEXT) == 5000
    pieces = long_text_server.server.engine.make_pieces("tara", TEXT)
    body = {"input": TEXT, "response_format": "pcm", "stream_format": "sse", "seed": SEED}
    async with httpx.AsyncClient(base_url=long_text_server.url, timeout=120) as client:
        response = await client.post("/v1/audio/speech", json=body)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.status_code == 200 and events[-1]["type"] == "speech.audio.done"
    metrics = events[-1]["metrics"]
    http_audio = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), "<i2") / 32767.0
    assert metrics["text_pieces"] == len(pieces) > 50
    assert len(http_audio) == metrics["frames"] * orpheus.SAMPLES_PER_FRAME

    chunks = await grpc_chunks(long_text_server)
    frames_per_piece = np.bincount([c.text_piece for c in chunks], weights=[c.frames for c in chunks],
                                   minlength=len(pieces))
    assert (frames_per_piece > 0).all() and frames_per_piece.sum() == metrics["frames"]  # every piece spoken
    raw_audio = np.frombuffer(b"".join(c.data for c in chunks), "<i2") / 32767.0
    joins = [c.first_frame * orpheus.SAMPLES_PER_FRAME for a, c in zip(chunks, chunks[1:]) if c.text_piece != a.text_piece]
    assert len(joins) == len(pieces) - 1

    normal = typical_step(http_audio, joins)
    smoothed, raw = join_steps(http_audio, joins), join_steps(raw_audio, joins)
    print(f"\njoins: {len(joins)}; normal step (p99 inside pieces) {normal:.4f}; "
          f"raw join step max {raw.max():.4f} mean {raw.mean():.4f}; smoothed max {smoothed.max():.4f}")
    assert smoothed.max() <= normal  # no join is a discontinuity
    away_from_joins = np.ones(len(raw_audio), dtype=bool)
    for j in joins:
        away_from_joins[j:j + 120] = False
    assert np.abs(http_audio - raw_audio)[away_from_joins].max() <= 1 / 32767 + 1e-9  # smoothing stays local
