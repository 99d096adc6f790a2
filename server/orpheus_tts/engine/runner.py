"""Tensors in, token ids out: one batched forward (and sample) per prefill or decode step.

The runner owns the model, the KV cache and the sampler, and knows nothing of scheduling;
it turns a list of sessions into the step's input tensors and returns one new id per session.
"""

from __future__ import annotations

import torch

from orpheus_tts import orpheus
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.engine.session import Session
from orpheus_tts.model.llama import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, kv_cache: KVCache, sampler: Sampler):
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.device = model.output.weight.device

    def _tensor(self, values, dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _sampling_batch(self, sessions: list[Session]) -> SamplingBatch:
        f32 = torch.float32
        return SamplingBatch(
            slots=self._tensor([s.slot for s in sessions]),
            temperature=self._tensor([s.request.temperature for s in sessions], f32),
            top_p=self._tensor([s.request.top_p for s in sessions], f32),
            repetition_penalty=self._tensor([s.request.repetition_penalty for s in sessions], f32),
            seed=self._tensor([s.seed for s in sessions]),
            counter=self._tensor([s.metrics.tokens for s in sessions]),
            frame_position=self._tensor([s.accumulator.frame_position for s in sessions]),
        )

    @torch.inference_mode()
    def prefill(self, sessions: list[Session]) -> list[int]:
        """Run each session's current prompt from position 0 and sample its first audio token."""
        prompts = [s.piece.prompt for s in sessions]
        seqlen = max(len(p) for p in prompts)
        if seqlen > self.kv_cache.max_tokens:
            raise ValueError(f"prompt of {seqlen} tokens exceeds the KV slot ({self.kv_cache.max_tokens})")
        tokens = self._tensor([p + [orpheus.PAD] * (seqlen - len(p)) for p in prompts])
        slots = self._tensor([s.slot for s in sessions])
        lengths = self._tensor([len(p) for p in prompts])
        batch = self.model.make_batch(slots, torch.zeros_like(lengths), lengths, seqlen)
        hidden = self.model(tokens, batch, self.kv_cache)
        last = hidden[torch.arange(len(sessions), device=self.device), lengths - 1]
        for session, prompt in zip(sessions, prompts):
            # Hugging Face's repetition penalty also counts the prompt; keep the same rule.
            self.sampler.reset_slot(session.slot)
            self.sampler.record(self._tensor([session.slot] * len(prompt)), self._tensor(prompt))
            session.context_len = len(prompt)
        return self.sampler.sample(last, self._sampling_batch(sessions)).tolist()

    @torch.inference_mode()
    def decode(self, sessions: list[Session]) -> list[int]:
        """Feed each session its last id at its own position and sample the next one."""
        tokens = self._tensor([[s.next_input] for s in sessions])
        slots = self._tensor([s.slot for s in sessions])
        starts = self._tensor([s.context_len for s in sessions])
        batch = self.model.make_batch(slots, starts, torch.ones_like(starts), 1)
        hidden = self.model(tokens, batch, self.kv_cache)[:, 0]
        for session in sessions:
            session.context_len += 1
        return self.sampler.sample(hidden, self._sampling_batch(sessions)).tolist()
