"""Each KV slot's next decode input and sampling parameters, kept on the device.

A decode step reads its inputs (last id, position, token counter, frame position, sampling
parameters) from this table by slot and writes the advanced values back, inside the step
itself. The host therefore names only which slots run: it can queue the next step before it
has read this step's ids (the engine's `overlap_steps`), and a step's inputs cost one small
copy however many fields a row has. A prefill writes its sessions' rows when it samples their
first id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orpheus_tts import orpheus
from orpheus_tts.engine.sampler import SamplingBatch

INT_FIELDS = ("token", "position", "counter", "frame_position", "seed", "allow_eos", "adapter")
FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty")


class SlotState:
    def __init__(self, n_slots: int, max_tokens: int, device: torch.device | str):
        """`n_slots` rows (the KV cache's slots and its scratch slot); positions stay below
        `max_tokens` (padding rows advance the scratch slot every step)."""
        self.max_tokens = max_tokens
        self.ints = torch.zeros(len(INT_FIELDS), n_slots, dtype=torch.int64, device=device)
        self.floats = torch.ones(len(FLOAT_FIELDS), n_slots, dtype=torch.float32, device=device)
        self.ints[INT_FIELDS.index("token")] = orpheus.AUDIO_TOKEN_BASE
        self.ints[INT_FIELDS.index("adapter")] = -1  # the LoRA pool place of the slot's session: none

    def field(self, name: str) -> Tensor:
        if name in INT_FIELDS:
            return self.ints[INT_FIELDS.index(name)]
        return self.floats[FLOAT_FIELDS.index(name)]

    def inputs(self, slots: Tensor) -> tuple[Tensor, Tensor, SamplingBatch]:
        """(ids to feed, their positions, sampling parameters) of the rows in `slots`."""
        ints, floats = self.ints[:, slots], self.floats[:, slots]
        token, position, counter, frame_position, seed, allow_eos, _ = ints
        temperature, top_p, penalty = floats
        sampling = SamplingBatch(slots=slots, temperature=temperature, top_p=top_p, repetition_penalty=penalty,
                                 seed=seed, counter=counter, frame_position=frame_position, allow_eos=allow_eos)
        return token, position.clamp(max=self.max_tokens - 1), sampling

    def start(self, slots: Tensor, last_positions: Tensor, sampling: SamplingBatch) -> None:
        """A prefill's rows: the prompt's last position and the session's sampling parameters
        (`advance` then sets the first id)."""
        self.ints[1:6, slots] = torch.stack([last_positions, sampling.counter, sampling.frame_position, sampling.seed,
                                             sampling.allow_eos])
        self.floats[:, slots] = torch.stack([sampling.temperature, sampling.top_p, sampling.repetition_penalty])

    def advance(self, slots: Tensor, sampled: Tensor, positions: Tensor, sampling: SamplingBatch) -> None:
        """After a row sampled `sampled` from its input at `positions`: the next step feeds that
        id one position on, with the counter and frame position moved as the stream decoder
        moves them (an id not valid at its frame position is skipped, as is end-of-speech)."""
        frame = sampling.frame_position
        low = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * frame
        valid = (sampled >= low) & (sampled < low + orpheus.CODEBOOK_SIZE)
        next_frame = torch.where(valid, (frame + 1) % orpheus.TOKENS_PER_FRAME, frame)
        fed = sampled.clamp(min=0)  # a NON_FINITE row (its session is ending) feeds a real id meanwhile
        self.ints[:4, slots] = torch.stack([fed, positions + 1, sampling.counter + 1, next_frame])
