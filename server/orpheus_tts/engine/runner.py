"""Sessions in, queued forwards out: one batched forward (and sample) per prefill or decode step.

The runner owns the model, the KV cache, the sampler and each slot's decode state, and knows
nothing of scheduling. `launch_prefill` and `launch_decode` queue a step and return at once;
the sampled ids arrive in host memory, and `LaunchedStep.tokens()` waits for them. A decode
step needs only the sessions' slots from the host (its inputs are in `SlotState`), so the
engine may queue the next step before it has read this one's ids.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.engine.cuda_graphs import DecodeGraphs, PrefillGraphs, StagingRing
from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.engine.sampler import Sampler, SamplingBatch
from orpheus_tts.engine.session import Session
from orpheus_tts.engine.slot_state import SlotState
from orpheus_tts.engine.step_cost import StepCost
from orpheus_tts.model.llama import Transformer


class LaunchedStep:
    """A queued forward: which sessions (and pieces) it samples for, and where its ids land.
    A prefill also reports how long it took to `timed` (its prompt tokens and device seconds,
    between `started` and its landing event, or the wall time of an eager one)."""

    def __init__(self, sessions: list[Session], ids: Tensor, event: torch.cuda.Event | None,
                 started: torch.cuda.Event | float | None = None, timed: StepCost | None = None):
        self.sessions = sessions
        self.pieces = [s.piece_index for s in sessions]  # a row whose session moved on is stale
        self.context_tokens = sum(len(s.piece.prompt) + s.ids_requested for s in sessions)  # what it reads
        self._ids, self._event, self._started, self._timed = ids, event, started, timed
        if timed is not None and isinstance(started, float):  # eager: the ids are already on the host
            timed.observe(self.context_tokens, time.perf_counter() - started)

    def tokens(self) -> list[int]:
        """The sampled ids, one per session; waits for the device if it has not finished."""
        if self._event is not None:
            self._event.synchronize()
            if self._timed is not None and self._started is not None:  # once
                self._timed.observe(self.context_tokens, self._started.elapsed_time(self._event) / 1e3)
                self._timed = None
        return self._ids.tolist()


class ModelRunner:
    def __init__(self, model: Transformer, kv_cache: KVCache, sampler: Sampler, max_batch: int,
                 cuda_graphs: bool):
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.device = model.output.weight.device
        self.state = SlotState(kv_cache.n_slots + 1, kv_cache.max_tokens, self.device)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self._decode_ids: StagingRing | None = None
        self._prefill_ids: StagingRing | None = None
        self.prefill_cost = StepCost()  # a prefill's device seconds against its prompt tokens (capacity.py)
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(self, max_batch)
            self.graphs.capture()
            self.graphs.verify()
            self.prefill_graphs = PrefillGraphs(self)
            self.prefill_graphs.capture()
            self._decode_ids = StagingRing((max_batch,), torch.int64)
            self._prefill_ids = StagingRing((max(PrefillGraphs.BATCHES),), torch.int64)

    @property
    def max_prefill_batch(self) -> int | None:
        """The most prompts one prefill should take (the largest graph), None when eager."""
        return max(self.prefill_graphs.BATCHES) if self.prefill_graphs is not None else None

    # -- the steps as tensor programs (captured as graphs on a GPU, run directly elsewhere) --
    def decode_step(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Feed each slot its last id at its own position, sample the next one and advance the
        slot's state; returns (ids, final hidden states)."""
        tokens, positions, sampling = self.state.inputs(slots)
        batch = self.model.make_decode_batch(slots, positions)
        if self.model.lora is not None:  # each row's LoRA adapter, from its slot
            batch = self.model.with_adapters(batch, self.state.field("adapter")[slots], 1)
        hidden = self.model(tokens[:, None], batch, self.kv_cache)[:, 0]
        sampled = self.sampler.sample(hidden, sampling)
        self.state.advance(slots, sampled, positions, sampling)
        return sampled, hidden

    def prefill_step(self, prompts: Tensor, ints: Tensor, floats: Tensor, kv_len: int | None = None) -> Tensor:
        """Run right-padded prompts [B, L] from position 0, sample each one's first audio id and
        start its slot's state. ints [5, B]: slot, prompt length, seed, counter, end-of-speech
        allowed; floats [3, B]: temperature, top-p, repetition penalty."""
        slots, lengths, seed, counter, allow_eos = ints
        temperature, top_p, penalty = floats
        self.sampler.start_slots(slots, prompts, lengths)
        batch = self.model.make_batch(slots, torch.zeros_like(lengths), lengths, prompts.shape[1], kv_len=kv_len)
        if self.model.lora is not None:
            batch = self.model.with_adapters(batch, self.state.field("adapter")[slots], prompts.shape[1])
        hidden = self.model(prompts, batch, self.kv_cache)
        last = hidden[torch.arange(prompts.shape[0], device=hidden.device), lengths - 1]
        sampling = SamplingBatch(slots=slots, temperature=temperature, top_p=top_p, repetition_penalty=penalty,
                                 seed=seed, counter=counter, frame_position=torch.zeros_like(seed),
                                 allow_eos=allow_eos)
        sampled = self.sampler.sample(last, sampling)
        self.state.start(slots, lengths - 1, sampling)
        self.state.advance(slots, sampled, lengths - 1, sampling)
        return sampled

    def set_adapter(self, slot: int, place: int) -> None:
        """The LoRA pool place (-1: none) the session in `slot` decodes with, from its prefill on."""
        self.state.field("adapter")[slot] = place

    # -- queueing steps for sessions --------------------------------------------------------
    @staticmethod
    def prefill_inputs(sessions: list[Session]) -> tuple[np.ndarray, np.ndarray]:
        """ints [5, B] (slot, prompt length, seed, counter, end-of-speech allowed) and floats
        [3, B] (temperature, top-p, repetition penalty) of sessions starting a piece."""
        ints = np.array([[s.slot, len(s.piece.prompt), s.seed, s.metrics.tokens,
                          0 if s.request.ignore_end_of_speech else 1] for s in sessions], dtype=np.int64).T
        floats = np.array([[s.request.temperature, s.request.top_p, s.request.repetition_penalty]
                           for s in sessions], dtype=np.float32).T
        return ints.reshape(5, len(sessions)), floats.reshape(3, len(sessions))

    @torch.inference_mode()
    def launch_prefill(self, sessions: list[Session]) -> LaunchedStep:
        """Queue the prefill of each session's current prompt (and the sample of its first id)."""
        prompts = [s.piece.prompt for s in sessions]
        seqlen = max(len(p) for p in prompts)
        if seqlen > self.kv_cache.max_tokens:
            raise ValueError(f"prompt of {seqlen} tokens exceeds the KV slot ({self.kv_cache.max_tokens})")
        ints, floats = self.prefill_inputs(sessions)
        started = torch.cuda.Event(enable_timing=True) if self.device.type == "cuda" else time.perf_counter()
        if self.device.type == "cuda":
            started.record()
        if self.prefill_graphs is not None and self.prefill_graphs.fits(len(prompts), seqlen):
            ids = self.prefill_graphs.run(prompts, ints, floats)
            return self._landing(sessions, ids, self._prefill_ids, started, self.prefill_cost)
        padded = np.full((len(prompts), seqlen), orpheus.PAD, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            padded[row, : len(prompt)] = prompt
        to_device = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        ids = self.prefill_step(to_device(padded), to_device(ints), to_device(floats))
        return self._landing(sessions, ids, None, started, self.prefill_cost)

    @torch.inference_mode()
    def launch_decode(self, sessions: list[Session]) -> LaunchedStep:
        """Queue one decode step for the sessions (their inputs are in the slot state)."""
        slots = np.array([s.slot for s in sessions], dtype=np.int64)
        if self.graphs is not None:
            return self._landing(sessions, self.graphs.run(slots), self._decode_ids)
        ids, _ = self.decode_step(torch.from_numpy(slots).to(self.device))
        return self._landing(sessions, ids, None)

    def _landing(self, sessions: list[Session], ids: Tensor, ring: StagingRing | None,
                 started: torch.cuda.Event | float | None = None, timed: StepCost | None = None) -> LaunchedStep:
        """Copy a step's ids to host memory behind it (a graph's output buffer is overwritten
        by its next replay) and note when they are there."""
        if ring is None:
            if isinstance(started, torch.cuda.Event):  # eager on a GPU: time it on the device all the same
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                return LaunchedStep(sessions, ids.cpu(), event, started, timed)
            return LaunchedStep(sessions, ids.cpu(), None, started, timed)
        host = ring.take()[: len(sessions)]
        host.copy_(ids, non_blocking=True)
        event = torch.cuda.Event(enable_timing=started is not None)
        event.record()
        return LaunchedStep(sessions, host, event, started, timed)
