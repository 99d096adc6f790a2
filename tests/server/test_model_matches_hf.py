"""Our Llama must compute what Hugging Face's LlamaForCausalLM computes, from the same checkpoint."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orpheus_tts.engine.kv_cache import KVCache
from orpheus_tts.model.loader import CheckpointError, load_model

ATOL = 2e-4


def tiny_config(tie: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_theta=500000.0, tie_word_embeddings=tie,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
    )


@pytest.fixture(scope="module", params=[("untied", "one_file"), ("tied", "sharded")], ids=lambda p: "-".join(p))
def checkpoint(request, tmp_path_factory):
    tie = request.param[0] == "tied"
    torch.manual_seed(0)
    hf = LlamaForCausalLM(tiny_config(tie)).eval()
    directory = tmp_path_factory.mktemp("ckpt")
    shard = "40KB" if request.param[1] == "sharded" else "1GB"
    hf.save_pretrained(directory, max_shard_size=shard, safe_serialization=True)
    if request.param[1] == "sharded":
        assert (directory / "model.safetensors.index.json").exists()
    return hf, directory


def _cache(model, n_slots=4, max_tokens=64):
    a = model.args
    return KVCache(a.n_layers, n_slots, a.n_kv_heads, max_tokens, a.head_dim, torch.float32, "cpu")


def test_prompt_logits_match_transformers(checkpoint):
    hf, directory = checkpoint
    ours = load_model(str(directory), torch.device("cpu"), torch.float32, max_positions=64)
    prompts = [[5, 17, 300, 42, 7, 99, 1], [11, 3, 250]]
    cache = _cache(ours)
    seqlen = max(map(len, prompts))
    tokens = torch.tensor([p + [0] * (seqlen - len(p)) for p in prompts])
    lengths = torch.tensor([len(p) for p in prompts])
    slots = torch.tensor([2, 0])
    with torch.inference_mode():
        batch = ours.make_batch(slots, torch.zeros(2, dtype=torch.long), lengths, seqlen)
        logits = ours.logits(ours(tokens, batch, cache))
        # The static form CUDA graphs use: keys read up to a padded bound, the mask hides the rest.
        padded = 16
        tokens_padded = torch.nn.functional.pad(tokens, (0, padded - seqlen))
        static = ours.make_batch(slots, torch.zeros(2, dtype=torch.long), lengths, padded, kv_len=padded)
        static_logits = ours.logits(ours(tokens_padded, static, cache))
        for row, prompt in enumerate(prompts):
            expected = hf(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(logits[row, : len(prompt)], expected, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(static_logits[row, : len(prompt)], expected, atol=ATOL, rtol=1e-4)


def test_cached_decode_steps_match_transformers_at_different_positions(checkpoint):
    """Two sessions at different lengths decode together; each step must equal a full forward."""
    hf, directory = checkpoint
    ours = load_model(str(directory), torch.device("cpu"), torch.float32, max_positions=64)
    cache = _cache(ours)
    sequences = [[5, 17, 300, 42, 7, 99, 1, 8], [11, 3]]
    slots = torch.tensor([1, 3])
    lengths = torch.tensor([len(s) for s in sequences])
    seqlen = int(lengths.max())
    with torch.inference_mode():
        tokens = torch.tensor([s + [0] * (seqlen - len(s)) for s in sequences])
        ours(tokens, ours.make_batch(slots, torch.zeros(2, dtype=torch.long), lengths, seqlen), cache)
        rng = torch.Generator().manual_seed(1)
        for _ in range(5):
            new = torch.randint(0, 512, (2,), generator=rng)
            starts = torch.tensor([len(s) for s in sequences])
            batch = ours.make_decode_batch(slots, starts)
            got = ours.logits(ours(new[:, None], batch, cache))[:, 0]
            for row in range(2):
                sequences[row].append(int(new[row]))
                expected = hf(torch.tensor([sequences[row]])).logits[0, -1]
                torch.testing.assert_close(got[row], expected, atol=ATOL, rtol=1e-4)


def test_checkpoint_without_lm_head_shares_the_embedding(checkpoint):
    hf, directory = checkpoint
    ours = load_model(str(directory), torch.device("cpu"), torch.float32, max_positions=64)
    tied = hf.config.tie_word_embeddings
    assert (ours.output.weight.data_ptr() == ours.tok_embeddings.weight.data_ptr()) == tied
    torch.testing.assert_close(ours.output.weight, hf.lm_head.weight)


def test_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(True).to_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32, max_positions=64)
