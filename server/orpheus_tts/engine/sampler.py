"""Batched sampling with per-session temperature, top-p, repetition penalty and seed.

Constrained decoding: the frame position of the next audio token fixes which 4096 ids are
valid (plus end-of-speech at a frame boundary), so only those rows of the output head are
computed (1/38 of it) and no invalid frame can ever be produced. With the switch off, the
full head is computed and the stream decoder skips what is not valid.

Randomness is a counter-based hash of (session seed, token index, candidate index): rows of a
batch sample independently and reproducibly with no per-session generator objects, and the
whole step stays a fixed sequence of tensor ops (CUDA-graph friendly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.model.llama import Transformer

_MASK32 = 0xFFFFFFFF
# The id a row reports when its distribution was not finite (a NaN or infinite logit: a fault in the
# weights or the step, never the caller's); the engine ends that row's session with an error.
NON_FINITE = -1


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of one step, all tensors of shape [B] on the model's device."""

    slots: Tensor  # int64 KV slot (indexes the repetition history)
    temperature: Tensor  # float32; 0 means greedy
    top_p: Tensor  # float32 in (0, 1]
    repetition_penalty: Tensor  # float32 >= 1
    seed: Tensor  # int64
    counter: Tensor  # int64 index of the token being sampled within its session
    frame_position: Tensor  # int64 0..6, position of the next audio token in its frame
    allow_eos: Tensor | None = None  # int64 0/1; 0 suppresses end-of-speech (benchmarks). None: allowed


def _fmix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def column_keys(n: int, device) -> Tensor:
    """Per-column hash keys, as a tensor in memory: under `torch.compile` an arange would
    become 32-bit index arithmetic, and the key multiplication would overflow it."""
    return torch.arange(n, device=device, dtype=torch.int64) * 0xC2B2AE3D


def hashed_uniform(seed: Tensor, counter: Tensor, n: int, keys: Tensor | None = None) -> Tensor:
    """[B, n] uniforms in (0, 1), a pure function of (seed, counter, column)."""
    row = _fmix32((seed & _MASK32) ^ _fmix32((counter * 0x9E3779B1) & _MASK32))
    keys = column_keys(n, seed.device) if keys is None else keys[:n]
    x = _fmix32((row[:, None] + keys[None, :]) & _MASK32)
    return ((x >> 8).float() + 0.5) / float(1 << 24)


class Sampler:
    def __init__(self, model: Transformer, n_slots: int, constrained: bool = True):
        self.model = model
        self.constrained = constrained
        device = model.output.weight.device
        self.vocab_size = model.args.vocab_size
        # Which ids each slot has produced so far (for the repetition penalty), allocated once.
        self.seen = torch.zeros(n_slots, self.vocab_size, dtype=torch.bool, device=device)
        self._audio_offsets = torch.arange(orpheus.CODEBOOK_SIZE, device=device, dtype=torch.int64)
        self._column_keys = column_keys(self.vocab_size, device)
        self._true = torch.ones((), dtype=torch.bool, device=device)  # a device value: graph-capturable

    def compile(self) -> None:
        """Compile `sample` for any batch size (GPU): penalty, temperature, top-p and the hash
        fuse into a few kernels instead of about forty. The graphs capture it at start-up."""
        self.sample = torch.compile(self.sample, dynamic=True)

    def start_slots(self, slots: Tensor, prompts: Tensor, lengths: Tensor) -> None:
        """New pieces in `slots`: forget their history, then count their prompts (Hugging Face's
        repetition penalty counts the prompt too). Prompt padding past `lengths` is recorded
        in the last (scratch) row, which no session owns."""
        self.seen.index_fill_(0, slots, False)
        real = torch.arange(prompts.shape[1], device=prompts.device)[None, :] < lengths[:, None]
        rows = torch.where(real, slots[:, None], self.seen.shape[0] - 1)
        self.seen.index_put_((rows, prompts), self._true)

    def record(self, slots: Tensor, tokens: Tensor) -> None:
        self.seen.index_put_((slots, tokens), self._true)

    def candidates(self, hidden: Tensor, batch: SamplingBatch) -> tuple[Tensor, Tensor]:
        """(ids [B, C], raw logits [B, C]) of the ids each row may produce.

        Constrained: the head rows of all 7 frame positions (28,672 of 156,940) in one matmul,
        then each row keeps its position's 4096. With 7 or more sessions in a batch every
        position is present anyway, so this reads no more weights than grouping rows by
        position would, and it has static shapes (CUDA graphs) with no host sync.
        """
        if not self.constrained:
            ids = torch.arange(self.vocab_size, device=hidden.device).expand(hidden.shape[0], -1)
            logits = self.model.logits(hidden)
            if batch.allow_eos is not None:
                banned = (ids == orpheus.END_OF_SPEECH) & (batch.allow_eos[:, None] == 0)
                logits = logits.masked_fill(banned, float("-inf"))
            return ids, logits
        n, base = orpheus.CODEBOOK_SIZE, orpheus.AUDIO_TOKEN_BASE
        pos = batch.frame_position
        every_position = self.model.logits_for_rows(hidden, slice(base, base + orpheus.AUDIO_VOCAB_SIZE))
        audio = every_position.view(-1, orpheus.TOKENS_PER_FRAME, n).gather(
            1, pos[:, None, None].expand(-1, 1, n)).squeeze(1)
        eos = self.model.logits_for_rows(hidden, slice(orpheus.END_OF_SPEECH, orpheus.END_OF_SPEECH + 1))
        eos_ok = pos[:, None] == 0
        if batch.allow_eos is not None:
            eos_ok = eos_ok & (batch.allow_eos[:, None] != 0)
        eos = torch.where(eos_ok, eos, torch.full_like(eos, float("-inf")))
        audio_ids = base + n * pos[:, None] + self._audio_offsets[None, :]
        eos_ids = torch.full_like(pos, orpheus.END_OF_SPEECH)[:, None]
        return torch.cat([audio_ids, eos_ids], dim=1), torch.cat([audio, eos], dim=1)

    def adjusted_logits(self, ids: Tensor, logits: Tensor, batch: SamplingBatch) -> Tensor:
        """Repetition penalty (Hugging Face's rule) and temperature applied."""
        seen = self.seen[batch.slots[:, None], ids]
        penalty = batch.repetition_penalty[:, None]
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
        temperature = batch.temperature.clamp(min=1e-5)[:, None]
        return logits / temperature

    def probabilities(self, hidden: Tensor, batch: SamplingBatch) -> tuple[Tensor, Tensor]:
        """(ids, probs) after penalty, temperature and top-p: the distribution `sample` draws from."""
        ids, logits = self.candidates(hidden, batch)
        probs = torch.softmax(self.adjusted_logits(ids, logits, batch), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = torch.where(before < batch.top_p[:, None], sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        return ids, probs / probs.sum(dim=-1, keepdim=True)

    def sample(self, hidden: Tensor, batch: SamplingBatch) -> Tensor:
        """Next token id per row [B], or NON_FINITE for a row whose logits were not finite (a NaN
        or an infinity makes the whole row of probabilities NaN: one reduction finds it, on the
        device, read with the ids); records each id in the row's repetition history."""
        ids, probs = self.probabilities(hidden, batch)
        # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i.
        exp_noise = -torch.log(hashed_uniform(batch.seed, batch.counter, probs.shape[1], self._column_keys))
        choice = torch.where(batch.temperature[:, None] > 0, probs / exp_noise, probs).argmax(dim=-1)
        tokens = ids.gather(1, choice[:, None]).squeeze(1)
        self.record(batch.slots, tokens)
        return torch.where(probs.isfinite().all(dim=-1), tokens, NON_FINITE)
