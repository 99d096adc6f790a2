"""The decode step (forward and sampling) captured as one CUDA graph per batch-size bucket.

A decode step is hundreds of small kernels; launching them one by one from Python costs more
than running them at small batch sizes. Each bucket's graph is captured once at start-up and
replayed with the step's inputs copied into static buffers. A batch is padded up to its
bucket with rows that point at a scratch KV slot no session owns, so padding never touches a
real session's cache or history.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.engine.sampler import Sampler, SamplingBatch

log = logging.getLogger(__name__)

_INT_FIELDS = ("tokens", "slots", "positions", "seed", "counter", "frame_position")
_FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 64, then of 32: little padding, few graphs."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    sizes += list(range(8, min(max_batch, 64) + 1, 8)) + list(range(96, max_batch + 1, 32))
    return sorted({*sizes, max_batch})


class DecodeGraphs:
    def __init__(self, model, kv_cache, sampler: Sampler, max_batch: int, scratch_slot: int):
        self.model, self.kv_cache, self.sampler = model, kv_cache, sampler
        self.scratch_slot = scratch_slot
        self.buckets = batch_buckets(max_batch)
        device = model.output.weight.device
        # Host staging (pinned) and device buffers: one copy each for the int and float inputs.
        self._host_int = torch.zeros(len(_INT_FIELDS), max_batch, dtype=torch.int64).pin_memory()
        self._host_float = torch.ones(len(_FLOAT_FIELDS), max_batch, dtype=torch.float32).pin_memory()
        self._int = torch.zeros(len(_INT_FIELDS), max_batch, dtype=torch.int64, device=device)
        self._float = torch.ones(len(_FLOAT_FIELDS), max_batch, dtype=torch.float32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, Tensor] = {}

    def _field(self, name: str, n: int) -> Tensor:
        if name in _INT_FIELDS:
            return self._int[_INT_FIELDS.index(name), :n]
        return self._float[_FLOAT_FIELDS.index(name), :n]

    def _step(self, n: int) -> Tensor:
        f = lambda name: self._field(name, n)  # noqa: E731
        batch = self.model.make_decode_batch(f("slots"), f("positions"))
        hidden = self.model.decode_forward(f("tokens")[:, None], batch, self.kv_cache)[:, 0]
        sampling = SamplingBatch(
            slots=f("slots"), temperature=f("temperature"), top_p=f("top_p"),
            repetition_penalty=f("repetition_penalty"), seed=f("seed"), counter=f("counter"),
            frame_position=f("frame_position"),
        )
        return self.sampler.sample(hidden, sampling)

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (Triton compiles, cuBLAS picks kernels) and capture every bucket, largest first."""
        self._load_padding(0, max(self.buckets))
        self._int.copy_(self._host_int)
        self._float.copy_(self._host_float)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for n in self.buckets:
                for _ in range(2):
                    self._step(n)
        torch.cuda.current_stream().wait_stream(stream)
        pool = None
        for n in sorted(self.buckets, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[n] = self._step(n)
            pool = graph.pool()
            self._graphs[n] = graph
        torch.cuda.synchronize()
        log.info("captured decode graphs for batch sizes %s", self.buckets)

    def _load_padding(self, start: int, end: int) -> None:
        ints, floats = self._host_int.numpy(), self._host_float.numpy()
        ints[:, start:end] = 0
        ints[_INT_FIELDS.index("tokens"), start:end] = orpheus.AUDIO_TOKEN_BASE
        ints[_INT_FIELDS.index("slots"), start:end] = self.scratch_slot
        floats[:, start:end] = 1.0

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.inference_mode()
    def run(self, ints: np.ndarray, floats: np.ndarray) -> Tensor:
        """ints: [6, n] (see _INT_FIELDS), floats: [3, n]; returns the n sampled ids (on device)."""
        n = ints.shape[1]
        bucket = self.bucket_for(n)
        self._host_int.numpy()[:, :n] = ints
        self._host_float.numpy()[:, :n] = floats
        self._load_padding(n, bucket)
        self._int[:, :bucket].copy_(self._host_int[:, :bucket], non_blocking=True)
        self._float[:, :bucket].copy_(self._host_float[:, :bucket], non_blocking=True)
        self._graphs[bucket].replay()
        return self._outputs[bucket][:n]
