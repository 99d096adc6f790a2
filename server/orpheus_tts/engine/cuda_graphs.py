"""The decode step (forward and sampling) captured as one CUDA graph per batch-size bucket.

A decode step is hundreds of small kernels; launching them one by one from Python costs more
than running them at small batch sizes. Each bucket's graph is captured once at start-up and
replayed with the step's slots copied into a static buffer (the rest of its inputs live in the
runner's slot state). A batch is padded up to its bucket with rows that point at a scratch KV
slot no session owns, so padding never touches a real session's cache or history. After
capture, `verify` checks a replay against the same step uncaptured, and a compiled block
against eager: a compiler or kernel fault on this GPU stops start-up instead of turning every
stream into noise.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.model.checks import compiled_block_difference, relative_difference

log = logging.getLogger(__name__)


class StagingRing:
    """Pinned host buffers used in turn, so copies to or from the device can be queued without
    waiting. The engine waits for a step's ids before it queues the step after next, so a ring
    of four is never rewritten while a copy that uses it is still queued."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, depth: int = 4):
        self._buffers = [torch.zeros(shape, dtype=dtype).pin_memory() for _ in range(depth)]
        self._next = 0

    def take(self) -> Tensor:
        buffer = self._buffers[self._next]
        self._next = (self._next + 1) % len(self._buffers)
        return buffer


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 64, then of 32: little padding, few graphs."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    sizes += list(range(8, min(max_batch, 64) + 1, 8)) + list(range(96, max_batch + 1, 32))
    return sorted({*sizes, max_batch})


def codec_batch_buckets(max_sessions: int, graph_max_batch: int) -> list[int]:
    """The codec's graph batch sizes: `batch_buckets`, from 2. A compiled decoder is traced once
    per window length for all batches of 2 or more; batches of 1 would cost one more trace per
    length at start-up (Dynamo specialises size-1 dimensions), and one window decodes in a
    padded batch of 2 in the same time."""
    return [b for b in batch_buckets(max(2, min(max_sessions, graph_max_batch))) if b > 1]


class DecodeGraphs:
    """`runner.decode_step` captured per batch bucket; a replay needs only the rows' slots."""

    def __init__(self, runner, max_batch: int):
        self.runner = runner
        self.scratch_slot = runner.kv_cache.scratch_slot
        self.buckets = batch_buckets(max_batch)
        self._slots = torch.full((max_batch,), self.scratch_slot, dtype=torch.int64, device=runner.device)
        self._staging = StagingRing((max_batch,), torch.int64)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, Tensor] = {}
        self._hidden: dict[int, Tensor] = {}  # each graph's final hidden states (for `verify`)

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (Triton compiles, cuBLAS picks kernels) and capture every bucket, largest first."""
        step = self.runner.decode_step
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for n in self.buckets:
                for _ in range(2):
                    step(self._slots[:n])
        torch.cuda.current_stream().wait_stream(stream)
        pool = None
        for n in sorted(self.buckets, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[n], self._hidden[n] = step(self._slots[:n])
            pool = graph.pool()
            self._graphs[n] = graph
        torch.cuda.synchronize()
        log.info("captured decode graphs for batch sizes %s", self.buckets)

    @torch.inference_mode()
    def verify(self, rows: int = 8, tolerance: float = 0.1) -> dict[str, float]:
        """Check the captured step two ways, each against a reference it should match, and raise
        if either is off; returns both relative differences.

        - `graph`: a replay against the same step run uncaptured (same compiled code, same
          inputs, rows at different positions). Capture must change nothing: any difference is
          a stale buffer or a kernel the graph cannot replay.
        - `compiled_block`: the first transformer block compiled against eager, on one input.
          Fused code rounds differently (Inductor keeps fp32 where eager stores bf16, which moves
          FP8 activation rounding), so they differ by about the precision's own error (0.6% in
          bf16, 4% in FP8 on H100); a compiler fault is off by order 1. The whole model is not
          compared: random weights amplify rounding through 28 blocks (FP8 differs by 40%).

        Uses slots 0..n-1 (no session owns one at start-up) and leaves their state as it found it.
        """
        runner, state = self.runner, self.runner.state
        n = self.bucket_for(min(rows, max(self.buckets)))
        slots = torch.arange(n, device=runner.device)
        saved = state.ints.clone()  # a decode step writes only the int fields
        state.field("position")[:n] = (torch.arange(n, device=runner.device) * 37 + 5) % state.max_tokens
        before = state.ints.clone()
        self._slots[:n] = slots
        self._graphs[n].replay()
        graphed = self._hidden[n].float().clone()
        state.ints.copy_(before)
        _, direct = runner.decode_step(slots)
        state.ints.copy_(before)
        tokens, positions, _ = state.inputs(slots)
        x = runner.model.tok_embeddings(tokens)[:, None]
        batch = runner.model.make_decode_batch(slots, positions)
        errors = dict(graph=relative_difference(graphed, direct),
                      compiled_block=compiled_block_difference(runner.model, x, batch, runner.kv_cache))
        state.ints.copy_(saved)
        bounds = dict(graph=1e-2, compiled_block=tolerance)
        for name, error in errors.items():
            if not error <= bounds[name]:
                raise RuntimeError(
                    f"decode check {name!r} failed (relative difference {error:.3g} > {bounds[name]}): a compiler "
                    "or kernel fault on this GPU; start with model.compile=false or model.cuda_graphs=false")
        log.info("decode graph checks passed (graph replay %.2g, compiled block %.2g)",
                 errors["graph"], errors["compiled_block"])
        return errors

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.inference_mode()
    def replay_seconds(self, bucket: int, repeats: int = 5) -> float:
        """Mean seconds of one replay of `bucket`'s graph, every row on the scratch slot (as in
        `capture`): the decode step's cost at that batch before any session has run."""
        self._slots[:bucket].fill_(self.scratch_slot)
        graph = self._graphs[bucket]
        graph.replay()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeats

    @torch.inference_mode()
    def run(self, slots: np.ndarray) -> Tensor:
        """Queue one step for the rows in `slots` (their inputs are in the slot state); returns
        the sampled ids on the device, valid until this bucket's next replay."""
        n = len(slots)
        bucket = self.bucket_for(n)
        host = self._staging.take()
        host.numpy()[:n] = slots
        host.numpy()[n:bucket] = self.scratch_slot
        self._slots[:bucket].copy_(host[:bucket], non_blocking=True)
        self._graphs[bucket].replay()
        return self._outputs[bucket][:n]


class PrefillGraphs:
    """`runner.prefill_step` as CUDA graphs per (batch, length) bucket.

    Eager, a prefill launches every layer's kernels one by one from Python: on an H100 that is
    over 100 ms for a prompt whose GPU work takes a few, and it stalls every running stream.
    Prompts are right-padded to a length bucket and batches to a batch bucket (padding rows
    use the scratch slot). Longer prompts or bigger batches fall back to eager.
    """

    BATCHES = (1, 2, 4, 8)
    LENGTHS = (32, 48, 64, 96, 128, 192, 256, 384, 512)  # 48: a short sentence's prompt (about 40 tokens)

    def __init__(self, runner):
        self.runner = runner
        self.scratch_slot = runner.kv_cache.scratch_slot
        self.lengths = [n for n in self.LENGTHS if n <= runner.kv_cache.max_tokens] or [runner.kv_cache.max_tokens]
        max_b, max_l = max(self.BATCHES), max(self.lengths)
        self._prompts = torch.full((max_b, max_l), orpheus.PAD, dtype=torch.int64, device=runner.device)
        self._int = torch.zeros(5, max_b, dtype=torch.int64, device=runner.device)
        self._float = torch.ones(3, max_b, dtype=torch.float32, device=runner.device)
        self._staging = (StagingRing((max_b * max_l,), torch.int64), StagingRing((5 * max_b,), torch.int64),
                         StagingRing((3 * max_b,), torch.float32))
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._outputs: dict[tuple[int, int], Tensor] = {}

    def _padding(self) -> list[list[int]]:
        """ints of a padding row: the scratch slot, a one-token prompt, end-of-speech allowed."""
        return [[self.scratch_slot], [1], [0], [0], [1]]

    def _step(self, b: int, length: int) -> Tensor:
        return self.runner.prefill_step(self._prompts[:b, :length], self._int[:, :b], self._float[:, :b],
                                        kv_len=length)

    @torch.inference_mode()
    def capture(self) -> None:
        self._int.copy_(torch.tensor(self._padding()).expand_as(self._int))
        shapes = [(b, n) for b in self.BATCHES for n in self.lengths]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b, n in shapes:
                self._step(b, n)
        torch.cuda.current_stream().wait_stream(stream)
        pool = None
        for b, n in sorted(shapes, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[b, n] = self._step(b, n)
            pool = graph.pool()
            self._graphs[b, n] = graph
        torch.cuda.synchronize()
        log.info("captured prefill graphs for batches %s x lengths %s", self.BATCHES, self.lengths)

    def fits(self, n_prompts: int, longest: int) -> bool:
        return n_prompts <= max(self.BATCHES) and longest <= max(self.lengths)

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], ints: np.ndarray, floats: np.ndarray) -> Tensor:
        """Queue a prefill. prompts: token lists; ints [5, n] and floats [3, n] as
        `runner.prefill_step` takes them. Returns the n sampled ids on the device."""
        n = len(prompts)
        b = next(size for size in self.BATCHES if size >= n)
        length = next(size for size in self.lengths if size >= max(map(len, prompts)))
        staged = [ring.take() for ring in self._staging]
        host_prompts, host_int, host_float = (staged[0][: b * length].view(b, length), staged[1][: 5 * b].view(5, b),
                                              staged[2][: 3 * b].view(3, b))
        host_prompts.numpy()[:] = orpheus.PAD
        for row, prompt in enumerate(prompts):
            host_prompts.numpy()[row, : len(prompt)] = prompt
        host_int.numpy()[:] = self._padding()  # padding rows, then the real ones
        host_int.numpy()[:, :n] = ints
        host_float.numpy()[:] = 1.0
        host_float.numpy()[:, :n] = floats
        self._prompts[:b, :length].copy_(host_prompts, non_blocking=True)
        self._int[:, :b].copy_(host_int, non_blocking=True)
        self._float[:, :b].copy_(host_float, non_blocking=True)
        self._graphs[b, length].replay()
        return self._outputs[b, length][:n]
