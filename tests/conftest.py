"""Shared fixtures: the demo model, codec and a small engine configuration."""

import pytest
import torch

from orpheus_tts.config import load_config
from orpheus_tts.model.loader import load_model


@pytest.fixture(scope="session")
def demo_model():
    return load_model("demo", torch.device("cpu"), torch.float32, max_positions=1024)


def small_config(**overrides):
    """Engine config for tests: CPU, short contexts, short texts, deterministic codec."""
    base = {
        "model.device": "cpu",
        "codec.device": "cpu",
        "codec.noise": False,
        "scheduler.max_context_tokens": 1024,
        "scheduler.max_concurrent_sessions": 4,
        "scheduler.max_batch_size": 4,
    }
    base.update(overrides)
    return load_config(overrides=base, environ={})
