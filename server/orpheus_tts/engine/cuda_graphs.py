"""The decode step (forward and sampling) captured as one CUDA graph per batch-size bucket.

A decode step is hundreds of small kernels; launching them one by one from Python costs more
than running them at small batch sizes. Each bucket's graph is captured once at start-up and
replayed with the step's inputs copied into static buffers. A batch is padded up to its
bucket with rows that point at a scratch KV slot no session owns, so padding never touches a
real session's cache or history. After capture, `verify` checks a replay against the same step
uncaptured, and a compiled block against eager: a compiler or kernel fault on this GPU stops
start-up instead of turning every stream into noise.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.model.loader import compiled_block_difference, relative_difference

log = logging.getLogger(__name__)

_INT_FIELDS = ("tokens", "slots", "positions", "seed", "counter", "frame_position", "allow_eos")
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
        self._hidden: dict[int, Tensor] = {}  # each graph's final hidden states (for `verify`)

    def _field(self, name: str, n: int) -> Tensor:
        if name in _INT_FIELDS:
            return self._int[_INT_FIELDS.index(name), :n]
        return self._float[_FLOAT_FIELDS.index(name), :n]

    def _step(self, n: int) -> tuple[Tensor, Tensor]:
        f = lambda name: self._field(name, n)  # noqa: E731
        batch = self.model.make_decode_batch(f("slots"), f("positions"))
        hidden = self.model(f("tokens")[:, None], batch, self.kv_cache)[:, 0]
        sampling = SamplingBatch(
            slots=f("slots"), temperature=f("temperature"), top_p=f("top_p"),
            repetition_penalty=f("repetition_penalty"), seed=f("seed"), counter=f("counter"),
            frame_position=f("frame_position"), allow_eos=f("allow_eos"),
        )
        return self.sampler.sample(hidden, sampling), hidden

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
                self._outputs[n], self._hidden[n] = self._step(n)
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
        """
        n = self.bucket_for(min(rows, max(self.buckets)))
        max_tokens = self.kv_cache.max_tokens
        self._load_padding(0, n)
        self._host_int.numpy()[_INT_FIELDS.index("positions"), :n] = (np.arange(n) * 37 + 5) % max_tokens
        self._int[:, :n].copy_(self._host_int[:, :n])
        self._float[:, :n].copy_(self._host_float[:, :n])
        self._graphs[n].replay()
        graphed = self._hidden[n].float().clone()
        _, direct = self._step(n)
        x = self.model.tok_embeddings(self._field("tokens", n))[:, None]
        batch = self.model.make_decode_batch(self._field("slots", n), self._field("positions", n))
        errors = dict(graph=relative_difference(graphed, direct),
                      compiled_block=compiled_block_difference(self.model, x, batch, self.kv_cache))
        bounds = dict(graph=1e-2, compiled_block=tolerance)
        for name, error in errors.items():
            if not error <= bounds[name]:
                raise RuntimeError(
                    f"decode check {name!r} failed (relative difference {error:.3g} > {bounds[name]}): a compiler "
                    "or kernel fault on this GPU; start with model.compile=false or model.cuda_graphs=false")
        log.info("decode graph checks passed (graph replay %.2g, compiled block %.2g)",
                 errors["graph"], errors["compiled_block"])
        return errors

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
        """ints: [7, n] (see _INT_FIELDS), floats: [3, n]; returns the n sampled ids (on device)."""
        n = ints.shape[1]
        bucket = self.bucket_for(n)
        self._host_int.numpy()[:, :n] = ints
        self._host_float.numpy()[:, :n] = floats
        self._load_padding(n, bucket)
        self._int[:, :bucket].copy_(self._host_int[:, :bucket], non_blocking=True)
        self._float[:, :bucket].copy_(self._host_float[:, :bucket], non_blocking=True)
        self._graphs[bucket].replay()
        return self._outputs[bucket][:n]


class PrefillGraphs:
    """Prompt prefill (forward and first sample) as CUDA graphs per (batch, length) bucket.

    Eager, a prefill launches every layer's kernels one by one from Python: on an H100 that is
    over 100 ms for a prompt whose GPU work takes a few, and it stalls every running stream.
    Prompts are right-padded to a length bucket and batches to a batch bucket (padding rows
    use the scratch slot). Longer prompts or bigger batches fall back to eager.
    """

    BATCHES = (1, 2, 4, 8)
    LENGTHS = (32, 64, 96, 128, 192, 256, 384, 512)

    def __init__(self, model, kv_cache, sampler: Sampler, scratch_slot: int):
        self.model, self.kv_cache, self.sampler = model, kv_cache, sampler
        self.scratch_slot = scratch_slot
        self.lengths = [n for n in self.LENGTHS if n <= kv_cache.max_tokens] or [kv_cache.max_tokens]
        device = model.output.weight.device
        max_b, max_l = max(self.BATCHES), max(self.lengths)
        self._tokens = torch.full((max_b, max_l), orpheus.PAD, dtype=torch.int64, device=device)
        # slots, lengths, seed, counter, frame position, end-of-speech allowed
        self._int = torch.zeros(6, max_b, dtype=torch.int64, device=device)
        self._float = torch.ones(3, max_b, dtype=torch.float32, device=device)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._outputs: dict[tuple[int, int], Tensor] = {}

    def _step(self, b: int, length: int) -> Tensor:
        slots, lengths, seed, counter, position, allow_eos = self._int[:, :b]
        batch = self.model.make_batch(slots, torch.zeros_like(lengths), lengths, length, kv_len=length)
        hidden = self.model(self._tokens[:b, :length], batch, self.kv_cache)
        last = hidden[torch.arange(b, device=hidden.device), lengths - 1]
        temperature, top_p, penalty = self._float[:, :b]
        return self.sampler.sample(last, SamplingBatch(
            slots=slots, temperature=temperature, top_p=top_p, repetition_penalty=penalty,
            seed=seed, counter=counter, frame_position=position, allow_eos=allow_eos))

    @torch.inference_mode()
    def capture(self) -> None:
        self._int[0] = self.scratch_slot
        self._int[1] = 1
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
        """prompts: token lists; ints [5, n] (slots, seed, counter, position, eos allowed); floats [3, n]."""
        n = len(prompts)
        b = next(size for size in self.BATCHES if size >= n)
        length = next(size for size in self.lengths if size >= max(map(len, prompts)))
        tokens = np.full((b, length), orpheus.PAD, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        host_int = np.zeros((6, b), dtype=np.int64)
        host_int[0], host_int[1] = self.scratch_slot, 1
        host_int[[0, 2, 3, 4, 5], :n] = ints
        host_int[1, :n] = [len(p) for p in prompts]
        host_float = np.ones((3, b), dtype=np.float32)
        host_float[:, :n] = floats
        self._tokens[:b, :length].copy_(torch.from_numpy(tokens))
        self._int[:, :b].copy_(torch.from_numpy(host_int))
        self._float[:, :b].copy_(torch.from_numpy(host_float))
        self._graphs[b, length].replay()
        return self._outputs[b, length][:n]
