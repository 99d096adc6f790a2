"""Checkpoint validation for the engine build, by the server's own loader.

A build refuses what a pod would refuse at start-up (no config.json, a shape the model does not
implement, a missing or unused tensor) and a checkpoint that is not an Orpheus one (its
vocabulary is not Orpheus'), so a voice fails in its build Job, with the reason in the Job's
log, instead of crash-looping every pod later.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from orpheus_tts import orpheus
from orpheus_tts.model.llama import ModelArgs
from orpheus_tts.model.loader import CheckpointError, load_model


def validate_model(directory: Path) -> ModelArgs:
    """Load the checkpoint on the CPU in bf16 as a GPU pod does, then drop it; returns its shape.

    Raises CheckpointError (a ValueError) with the loader's message when the server could not
    serve it. A 3B model in bf16 takes about 7 GB of memory here (the fused projections are new
    tensors), inside the build Job's 16 GiB limit.
    """
    try:
        model = load_model(str(directory), torch.device("cpu"), torch.bfloat16, max_positions=1)
    except (KeyError, ValueError, OSError, SafetensorError) as exc:  # a corrupt file too is the checkpoint's fault
        raise CheckpointError(f"{directory}: the server could not load this checkpoint: {exc}") from exc
    args = model.args
    if args.vocab_size != orpheus.VOCAB_SIZE:
        raise CheckpointError(f"{directory}: a vocabulary of {args.vocab_size} tokens, not Orpheus' "
                              f"{orpheus.VOCAB_SIZE} (is this an Orpheus checkpoint?)")
    return args
