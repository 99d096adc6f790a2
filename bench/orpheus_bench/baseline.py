"""The `transformers` baseline: Hugging Face's Llama at the Orpheus-3B shape (random weights,
bf16), sampling as Orpheus samples, so the engine's tokens/s has something to be compared with.
"""

from __future__ import annotations

import gc
import time

import torch

from orpheus_bench.results import log
from orpheus_tts import orpheus


def transformers_baseline(results, batches):
    """Tokens/s at each batch for 48 new tokens after a 40-token prompt (after a short warm-up)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=orpheus.VOCAB_SIZE, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                      num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                      rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=8192,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rows = []
    for b in batches:
        prompt = torch.randint(0, 128000, (b, 40), device="cuda")
        new = 48
        kwargs = dict(do_sample=True, temperature=0.6, top_p=0.8, repetition_penalty=1.1, max_new_tokens=new,
                      min_new_tokens=new, pad_token_id=0)
        model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(prompt, **kwargs)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        rows.append(dict(batch=b, tokens_per_s=b * new / s, ms_per_step=s / new * 1e3))
        log(f"transformers batch {b}: {b * new / s:.0f} tok/s")
    results["transformers_baseline"] = rows
    del model
    gc.collect()
    torch.cuda.empty_cache()
