"""Real checkpoints in their on-disk formats, small enough for tests: a tiny Orpheus-shaped Llama
(the full 156,940-token vocabulary), its tokenizer.json and a SNAC 24 kHz directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from snac import SNAC
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import DEMO_DECODER_DIM, SNAC_24KHZ


def llama_config(**overrides) -> LlamaConfig:
    fields = {"vocab_size": orpheus.VOCAB_SIZE, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "tie_word_embeddings": True}
    return LlamaConfig(**(fields | overrides))


def write_tokenizer(file: Path, ids: dict[str, int | None] | None = None) -> None:
    """A WordLevel tokenizer.json with the special tokens at `ids` (None leaves one out)."""
    ids = {"<|begin_of_text|>": orpheus.BOS, "<|eot_id|>": orpheus.END_OF_TEXT,
           "<custom_token_0>": orpheus.custom_token_id(0), **(ids or {})}
    specials = {token: i for token, i in ids.items() if i is not None}
    tokenizer = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "hello": 1, **specials}, unk_token="<unk>"))
    tokenizer.add_special_tokens(list(specials))
    tokenizer.save(str(file))


def write_checkpoint(directory: Path, config: LlamaConfig, shards: int = 1) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = {k: v.contiguous() for k, v in LlamaForCausalLM(config).to(torch.bfloat16).state_dict().items()}
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight")
    if shards == 1:
        save_file(weights, str(directory / "model.safetensors"))
    else:
        names = sorted(weights)
        weight_map = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: weights[n] for n in part}, str(directory / shard))
            weight_map |= dict.fromkeys(part, shard)
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    write_tokenizer(directory / "tokenizer.json")


def write_snac(directory: Path, config: dict, weights: dict[str, torch.Tensor] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if weights is not None:
        torch.save(weights, directory / "pytorch_model.bin")
    return directory



def write_demo_snac(directory: Path) -> Path:
    """The 24 kHz SNAC with the demo's small decoder, random weights."""
    config = {**SNAC_24KHZ, "decoder_dim": DEMO_DECODER_DIM}
    torch.manual_seed(0)
    return write_snac(directory, config, SNAC(**config).state_dict())
