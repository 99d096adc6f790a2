"""Numerical self-checks: how far a computed tensor is from a reference.

The engine runs them at start-up (a captured graph against the same step uncaptured, a compiled
block against eager), so a compiler or kernel fault on a GPU stops start-up instead of turning
every stream into noise; the tests and the benchmark report the same measures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orpheus_tts.model.llama import Transformer


def relative_difference(got: Tensor, want: Tensor) -> float:
    """|got - want| / |want| (Frobenius norms); a zero reference cannot hide a difference."""
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


@torch.inference_mode()
def compiled_block_difference(model: Transformer, x: Tensor, batch, kv_cache) -> float:
    """Relative difference between the first block run as compiled (if it is) and eagerly on the
    same input: the compiler's share of any disagreement, without 28 blocks amplifying it."""
    fused = model.layers[0](x, batch, kv_cache.layers[0])
    with torch.compiler.set_stance("force_eager"):
        eager = model.layers[0](x, batch, kv_cache.layers[0])
    return relative_difference(fused, eager)
