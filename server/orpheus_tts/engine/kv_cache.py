"""The KV cache: one fixed slot per session, allocated once at start-up.

Why slots and not a block pool: an Orpheus session is a short prompt plus a stream of audio
tokens whose worst case (the speech budget) is known at admission, and sessions are alike in
length, so a pool of equal slots wastes little; in exchange every session's keys are contiguous
(a decode kernel can read exactly `length` of them with no block table), the tensors have static
shapes (CUDA graphs need that), and allocation is a free-list pop that can never fragment or
fail half-way through a session. The cost is that each slot reserves `max_context_tokens`;
the operator's slot budget sizes pods for exactly that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orpheus_tts.model.fp8 import FP8
from orpheus_tts.model.kv_layer import LayerKV


class SlotsExhaustedError(RuntimeError):
    """No free slot: the scheduler must keep the session pending."""


class SlotAllocator:
    """Hands out slot indices; lowest first, so a lightly loaded server touches little memory."""

    def __init__(self, n_slots: int):
        self.n_slots = n_slots
        self._free = list(range(n_slots - 1, -1, -1))
        self._used: set[int] = set()

    def allocate(self) -> int:
        if not self._free:
            raise SlotsExhaustedError(f"all {self.n_slots} KV slots are in use")
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        self._free.append(slot)
        self._free.sort(reverse=True)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)


class KVCache:
    """Per layer, a `LayerKV` of shape [n_slots + 1, n_kv_heads, max_context_tokens, head_dim].

    The extra slot (`scratch_slot`) belongs to no session: padding rows of a fixed-size
    batch (CUDA graphs) write there. A float8_e4m3fn `dtype` keeps per-vector scales beside the
    values (`LayerKV`).
    """

    def __init__(self, n_layers: int, n_slots: int, n_kv_heads: int, max_tokens: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_slots + 1, n_kv_heads, max_tokens, head_dim)

        def layer() -> LayerKV:
            zeros = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
            if dtype != FP8:
                return LayerKV(zeros(), zeros())
            ones = lambda: torch.ones(shape[:-1], dtype=torch.float32, device=device)  # noqa: E731
            return LayerKV(zeros(), zeros(), ones(), ones())

        self.scratch_slot = n_slots
        self.dtype = dtype
        self.layers: list[LayerKV] = [layer() for _ in range(n_layers)]
        self.n_slots = n_slots
        self.max_tokens = max_tokens
        self.allocator = SlotAllocator(n_slots)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def clear_slot(self, slot: int) -> None:
        """Reset one slot as allocated. After a fault (NaN keys or values), what the session left
        must not reach the slot's next session: a batched prefill reads each row's slot up to the
        longest prompt, past the row's own, and a NaN times a zero attention weight is NaN."""
        for layer in self.layers:
            layer.k[slot].zero_()
            layer.v[slot].zero_()
            if layer.quantized:
                layer.k_scale[slot].fill_(1.0)
                layer.v_scale[slot].fill_(1.0)

