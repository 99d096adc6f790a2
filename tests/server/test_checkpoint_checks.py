"""engine_jobs.checkpoint on real files: a tiny Hugging Face Llama with Orpheus' vocabulary, a
real tokenizer.json, and a real SNAC; each test breaks one thing and reads the message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from snac import SNAC
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM

from checkpoint_testkit import llama_config, write_checkpoint, write_snac, write_tokenizer
from engine_jobs.checkpoint import validate_checkpoint, validate_snac
from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import DEMO_DECODER_DIM, SNAC_24KHZ
from orpheus_tts.model.loader import CheckpointError

LAYER0 = "model.layers.0."


@pytest.fixture(scope="module")
def good_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(root / "single", llama_config())
    write_checkpoint(root / "sharded", llama_config(tie_word_embeddings=False), shards=2)
    return {"single": root / "single", "sharded": root / "sharded"}


@pytest.fixture
def checkpoint(good_checkpoints, tmp_path) -> Path:
    """A copy of the good single-file checkpoint, for a test to break."""
    return Path(shutil.copytree(good_checkpoints["single"], tmp_path / "orpheus"))


@pytest.fixture
def sharded(good_checkpoints, tmp_path) -> Path:
    return Path(shutil.copytree(good_checkpoints["sharded"], tmp_path / "orpheus"))


def refusal(directory: Path, check=validate_checkpoint) -> str:
    with pytest.raises(CheckpointError) as caught:
        check(directory)
    return str(caught.value)


def rewrite_weights(file: Path, change) -> None:
    weights = load_file(str(file))
    change(weights)
    save_file(weights, str(file))


def test_a_good_checkpoint_passes_and_gives_its_model_args(checkpoint):
    args = validate_checkpoint(checkpoint)
    assert (args.vocab_size, args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.head_dim,
            args.intermediate_size, args.tie_word_embeddings) == (orpheus.VOCAB_SIZE, 16, 2, 2, 1, 8, 32, True)


def test_a_sharded_checkpoint_with_its_own_head_passes_untied(sharded):
    assert validate_checkpoint(sharded).tie_word_embeddings is False


def test_a_missing_config_field_is_named(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    del config["num_hidden_layers"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    message = refusal(checkpoint)
    assert "config.json" in message and "num_hidden_layers" in message


def test_a_vocabulary_that_is_not_orpheus_is_refused(tmp_path):
    write_checkpoint(tmp_path, llama_config(vocab_size=128_256))
    message = refusal(tmp_path)
    assert "config.json" in message and "vocab_size 128256, not Orpheus' 156940" in message
    assert "is this an Orpheus checkpoint?" in message


def test_an_index_naming_a_missing_shard_is_refused_naming_the_shard(sharded):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    message = refusal(sharded)
    assert "model.safetensors.index.json" in message and "model-00002-of-00002.safetensors" in message


def test_an_integer_tensor_is_refused_naming_it_and_its_dtype(checkpoint):
    name = LAYER0 + "mlp.up_proj.weight"
    rewrite_weights(checkpoint / "model.safetensors", lambda w: w.update({name: w[name].to(torch.int32)}))
    message = refusal(checkpoint)
    assert "model.safetensors" in message and name in message and "I32" in message


def test_a_truncated_safetensors_file_is_refused(checkpoint):
    file = checkpoint / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    message = refusal(checkpoint)
    assert "model.safetensors" in message and "truncated" in message


def test_a_corrupt_safetensors_header_is_refused(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    message = refusal(checkpoint)
    assert "model.safetensors" in message and "header is not JSON" in message


def test_a_wrong_shape_is_refused_naming_the_tensor_and_both_shapes(checkpoint):
    name = LAYER0 + "self_attn.k_proj.weight"
    rewrite_weights(checkpoint / "model.safetensors", lambda w: w.update({name: torch.zeros(16, 16)}))
    message = refusal(checkpoint)
    assert "model.safetensors" in message and name in message
    assert "has shape [16, 16], expected [8, 16]" in message


def test_a_missing_tensor_is_refused_naming_it(checkpoint):
    name = "model.layers.1.post_attention_layernorm.weight"
    rewrite_weights(checkpoint / "model.safetensors", lambda w: w.pop(name))
    message = refusal(checkpoint)
    assert "model.safetensors" in message and f"lacks tensors {name} [16]" in message


def test_an_unused_tensor_is_refused_but_rotary_frequencies_are_allowed(checkpoint):
    extra = {"model.layers.2.mlp.up_proj.weight": torch.zeros(32, 16),
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(4)}
    rewrite_weights(checkpoint / "model.safetensors", lambda w: w.update(extra))
    message = refusal(checkpoint)
    assert "does not use" in message and "model.layers.2.mlp.up_proj.weight" in message
    assert "inv_freq" not in message and "model.safetensors" in message


def test_a_checkpoint_without_tokenizer_json_is_refused(checkpoint):
    (checkpoint / "tokenizer.json").unlink()
    message = refusal(checkpoint)
    assert "tokenizer.json: missing" in message


def test_a_tokenizer_json_that_does_not_parse_is_refused(checkpoint):
    (checkpoint / "tokenizer.json").write_text("{}")
    assert "tokenizer.json: tokenizers cannot read it" in refusal(checkpoint)


@pytest.mark.parametrize(("ids", "expected"), [
    ({"<|eot_id|>": 128_001}, "<|eot_id|> is id 128001, expected id 128009"),
    ({"<|begin_of_text|>": None}, "<|begin_of_text|> is missing, expected id 128000"),
    ({"<custom_token_0>": 128_300}, "<custom_token_0> is id 128300, expected id 128256"),
    ({"<custom_token_0>": None, "<custom_token_9>": 128_256}, "id 128256 is '<custom_token_9>'"),
])
def test_a_tokenizer_with_another_special_token_id_is_refused(checkpoint, ids, expected):
    write_tokenizer(checkpoint / "tokenizer.json", ids)
    message = refusal(checkpoint)
    assert "tokenizer.json" in message and expected in message


def test_a_tokenizer_that_stops_before_the_custom_tokens_passes(checkpoint):
    """A plain Llama-3 tokenizer serves: the server adds the ids from 128256 on by number."""
    write_tokenizer(checkpoint / "tokenizer.json", {"<custom_token_0>": None})
    validate_checkpoint(checkpoint)


# -- SNAC ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snac_weights() -> dict[str, torch.Tensor]:
    """The real 24 kHz architecture, random weights."""
    torch.manual_seed(0)
    return SNAC(**SNAC_24KHZ).state_dict()


def test_the_24khz_snac_passes(tmp_path, snac_weights):
    validate_snac(write_snac(tmp_path, SNAC_24KHZ, snac_weights))


def test_snac_weights_saved_with_old_weight_norm_names_pass(tmp_path, snac_weights):
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                "weight_v"): v
           for k, v in snac_weights.items()}
    assert any(k.endswith("weight_g") for k in old)
    validate_snac(write_snac(tmp_path, SNAC_24KHZ, old))


def test_a_snac_config_with_another_sampling_rate_is_refused(tmp_path, snac_weights):
    message = refusal(write_snac(tmp_path, {**SNAC_24KHZ, "sampling_rate": 44_100}, snac_weights), validate_snac)
    assert "config.json" in message and "sampling_rate is 44100, expected 24000" in message


def test_a_snac_config_without_a_layout_field_is_refused(tmp_path):
    config = {k: v for k, v in SNAC_24KHZ.items() if k != "vq_strides"}
    message = refusal(write_snac(tmp_path, config), validate_snac)
    assert "config.json" in message and "vq_strides is missing, expected [4, 2, 1]" in message


def test_a_snac_without_weights_is_refused(tmp_path):
    message = refusal(write_snac(tmp_path, SNAC_24KHZ), validate_snac)
    assert "pytorch_model.bin: missing" in message


def test_snac_weights_that_do_not_fit_the_config_are_refused_naming_a_tensor(tmp_path):
    small = SNAC(**{**SNAC_24KHZ, "decoder_dim": DEMO_DECODER_DIM}).state_dict()
    message = refusal(write_snac(tmp_path, SNAC_24KHZ, small), validate_snac)
    assert "pytorch_model.bin: 'decoder.model." in message and "has shape [32], expected [512]" in message


def test_unreadable_snac_weights_are_refused(tmp_path):
    directory = write_snac(tmp_path, SNAC_24KHZ)
    (directory / "pytorch_model.bin").write_bytes(b"\0" * 64)
    message = refusal(directory, validate_snac)
    assert "pytorch_model.bin: torch.load(weights_only=True) cannot read it" in message
