"""Tiny Hugging Face Llama checkpoints and PEFT LoRA adapters for them, written by PEFT itself."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       rope_theta=500000.0, tie_word_embeddings=False)


def make_adapter(base_dir, out_dir, seed: int, rank: int, targets: list[str], **config) -> None:
    """A PEFT adapter with random (not PEFT's zero) B, written by PEFT itself."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, **config))
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.normal_(0.0, 0.2)
    peft_model.save_pretrained(out_dir)
