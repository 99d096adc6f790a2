"""A fingerprint of the demo engine's audio for fixed seeds, to compare two commits.

A change meant to keep behaviour (a refactor) must give bit-identical audio: with adaptive
chunks off (chunk joins then follow tokens, not timing) and the codec's noise off, the same
requests with the same seeds give the same samples, chunk for chunk, with overlapped steps and
without. Run it at both commits and compare the `fingerprint` fields.

    python -m orpheus_bench.same_seed_audio --out bench/results/cpu-same-seed-audio.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

import torch

from orpheus_bench.results import command_line, header, write_json
from orpheus_bench.server_parts import AudioChunk, Engine
from orpheus_tts.config import load_config

# (voice, text, seed): a sentence, a long text split into pieces, an emotion tag.
REQUESTS = [
    ("tara", "Hello there, this is a short one.", 1),
    ("leo", "A longer text. " * 30 + "It has several sentences, so it is split into pieces! Does it join? Yes.", 2),
    ("zoe", "Another voice <laugh> with an emotion tag.", 3),
]
STREAMED = ("dan", ["First part of a streamed text. ", "And the second part arrives later."], 9)


def _chunk(event: AudioChunk) -> list:
    return [event.first_frame, event.frames, event.piece, hashlib.sha256(event.samples.tobytes()).hexdigest()[:12]]


async def _streams(overlap: bool) -> list[dict]:
    config = load_config(overrides={
        "model.device": "cpu", "codec.device": "cpu", "codec.noise": False, "scheduler.adaptive_chunks": False,
        "scheduler.max_context_tokens": 1024, "scheduler.max_concurrent_sessions": 4,
        "scheduler.max_batch_size": 4, "scheduler.overlap_steps": overlap}, environ={})
    engine = Engine.from_config(config).start()
    try:
        async def one(voice: str, text: str, seed: int) -> dict:
            chunks, end = [], None
            async for event in engine.synthesize(engine.make_request(text, voice=voice, seed=seed)):
                if isinstance(event, AudioChunk):
                    chunks.append(_chunk(event))
                else:
                    end = [event.outcome.value, event.metrics.tokens, event.metrics.frames, event.metrics.pieces]
            return {"chunks": chunks, "end": end}

        results = await asyncio.gather(*(one(*request) for request in REQUESTS))
        voice, parts, seed = STREAMED
        stream = engine.open_stream(engine.make_request("", voice=voice, seed=seed, allow_empty_text=True),
                                    streaming_text=True)
        for i, part in enumerate(parts):
            stream.add_text(part, final=i == len(parts) - 1)
        results.append({"chunks": [_chunk(e) async for e in stream.events() if isinstance(e, AudioChunk)]})
        return results
    finally:
        engine.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orpheus_bench.same_seed_audio",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/cpu-same-seed-audio.json")
    opts = parser.parse_args(argv)
    streams = {f"overlap_steps={overlap}": asyncio.run(_streams(overlap)) for overlap in (True, False)}
    fingerprint = hashlib.sha256(json.dumps(streams).encode()).hexdigest()
    results = {**header(torch.device("cpu"), command_line("orpheus_bench.same_seed_audio", argv)),
               "fingerprint": fingerprint, "chunks": {k: [len(s["chunks"]) for s in v] for k, v in streams.items()},
               "streams": streams}
    write_json(Path(opts.out), results)
    print(fingerprint)


if __name__ == "__main__":
    main()
