"""Tiny Hugging Face Llama checkpoints and PEFT LoRA adapters for them, written by PEFT itself."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       rope_theta=500000.0, tie_word_embeddings=False)


def demo_config() -> LlamaConfig:
    """The built-in demo model's shape (`model.path: demo`) as a Hugging Face config: adapters made
    on it fit the demo model the engine runs."""
    from orpheus_tts.model.llama import NAMED_CONFIGS, ModelArgs

    args = ModelArgs(**NAMED_CONFIGS["demo"])
    return LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.intermediate_size,
                       num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                       num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim, tie_word_embeddings=True)


def make_adapter(base, out_dir, seed: int, rank: int, targets: list[str], **config) -> None:
    """A PEFT adapter with random (not PEFT's zero) B, written by PEFT itself, for `base`: a
    checkpoint directory or a LlamaConfig (random weights: only the shapes matter to an adapter)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(base) if isinstance(base, LlamaConfig) else LlamaForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, **config))
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.normal_(0.0, 0.2)
    peft_model.save_pretrained(out_dir)
