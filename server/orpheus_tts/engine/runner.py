"""Tensors in, token ids out: one batched forward (and sample) per prefill or decode step.

The runner owns the model, the KV cache and the sampler, and knows nothing of scheduling;
it turns a list of sessions into the step's input tensors and returns one new id per session.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from orpheus_tts import orpheus
from orpheus_tts.engine.cuda_graphs import DecodeGraphs, PrefillGraphs
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.engine.session import Session
from orpheus_tts.model.llama import Transformer


def _collect(tokens: torch.Tensor, while_running: Callable[[], None] | None) -> list[int]:
    if while_running is not None:
        while_running()
    return tokens.tolist()


class ModelRunner:
    def __init__(self, model: Transformer, kv_cache: KVCache, sampler: Sampler, max_batch: int,
                 cuda_graphs: bool):
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.device = model.output.weight.device
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(model, kv_cache, sampler, max_batch, kv_cache.scratch_slot)
            self.graphs.capture()
            self.graphs.verify()
            self.prefill_graphs = PrefillGraphs(model, kv_cache, sampler, kv_cache.scratch_slot)
            self.prefill_graphs.capture()

    @property
    def max_prefill_batch(self) -> int | None:
        """The most prompts one prefill should take (the largest graph), None when eager."""
        return max(self.prefill_graphs.BATCHES) if self.prefill_graphs is not None else None

    def _tensor(self, values, dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _sampling_batch(self, sessions: list[Session]) -> SamplingBatch:
        """The sessions' sampling parameters on the device (eager path; graphs copy the arrays)."""
        ints, floats = (torch.from_numpy(a).to(self.device) for a in self._sampling_arrays(sessions))
        slots, seed, counter, frame_position, allow_eos = ints
        return SamplingBatch(slots=slots, temperature=floats[0], top_p=floats[1], repetition_penalty=floats[2],
                             seed=seed, counter=counter, frame_position=frame_position, allow_eos=allow_eos)

    @torch.inference_mode()
    def prefill(self, sessions: list[Session], while_running: Callable[[], None] | None = None) -> list[int]:
        """Run each session's current prompt from position 0 and sample its first audio token.

        `while_running` is called once the GPU work is queued, before waiting for its result."""
        prompts = [s.piece.prompt for s in sessions]
        seqlen = max(len(p) for p in prompts)
        if seqlen > self.kv_cache.max_tokens:
            raise ValueError(f"prompt of {seqlen} tokens exceeds the KV slot ({self.kv_cache.max_tokens})")
        for session, prompt in zip(sessions, prompts):
            # Hugging Face's repetition penalty also counts the prompt; keep the same rule.
            self.sampler.reset_slot(session.slot)
            self.sampler.record(self._tensor([session.slot] * len(prompt)), self._tensor(prompt))
            session.context_len = len(prompt)
        if self.prefill_graphs is not None and self.prefill_graphs.fits(len(prompts), seqlen):
            ints, floats = self._sampling_arrays(sessions)
            return _collect(self.prefill_graphs.run(prompts, ints, floats), while_running)
        tokens = self._tensor([p + [orpheus.PAD] * (seqlen - len(p)) for p in prompts])
        slots = self._tensor([s.slot for s in sessions])
        lengths = self._tensor([len(p) for p in prompts])
        batch = self.model.make_batch(slots, torch.zeros_like(lengths), lengths, seqlen)
        hidden = self.model(tokens, batch, self.kv_cache)
        last = hidden[torch.arange(len(sessions), device=self.device), lengths - 1]
        return _collect(self.sampler.sample(last, self._sampling_batch(sessions)), while_running)

    @staticmethod
    def _sampling_arrays(sessions: list[Session]) -> tuple[np.ndarray, np.ndarray]:
        """ints [5, B] (slot, seed, counter, frame position, end-of-speech allowed) and floats [3, B]
        (temperature, top_p, repetition penalty) of the sessions, as host arrays."""
        ints = np.array([[s.slot, s.seed, s.metrics.tokens, s.accumulator.frame_position,
                          0 if s.request.ignore_end_of_speech else 1] for s in sessions], dtype=np.int64).T
        floats = np.array([[s.request.temperature, s.request.top_p, s.request.repetition_penalty]
                           for s in sessions], dtype=np.float32).T
        return ints, floats

    def decode_inputs(self, sessions: list[Session]) -> tuple[np.ndarray, np.ndarray]:
        """The step's inputs as two host arrays (ints [7, B], floats [3, B]; see cuda_graphs)."""
        ints, floats = self._sampling_arrays(sessions)
        tokens = np.array([s.next_input for s in sessions], dtype=np.int64)
        positions = np.array([s.context_len for s in sessions], dtype=np.int64)
        return np.stack([tokens, ints[0], positions, ints[1], ints[2], ints[3], ints[4]]), floats

    @torch.inference_mode()
    def decode(self, sessions: list[Session], while_running: Callable[[], None] | None = None) -> list[int]:
        """Feed each session its last id at its own position and sample the next one.

        `while_running` is called once the GPU work is queued, before waiting for its result."""
        ints, floats = self.decode_inputs(sessions)
        if self.graphs is not None:
            tokens = self.graphs.run(ints, floats)
        else:
            tokens = self._decode_eager(torch.from_numpy(ints).to(self.device), torch.from_numpy(floats).to(self.device))
        for session in sessions:
            session.context_len += 1
        return _collect(tokens, while_running)

    def _decode_eager(self, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        tokens, slots, positions, seed, counter, frame_position, allow_eos = ints
        batch = self.model.make_decode_batch(slots, positions)
        hidden = self.model(tokens[:, None], batch, self.kv_cache)[:, 0]
        sampling = SamplingBatch(slots=slots, temperature=floats[0], top_p=floats[1], repetition_penalty=floats[2],
                                 seed=seed, counter=counter, frame_position=frame_position, allow_eos=allow_eos)
        return self.sampler.sample(hidden, sampling)
