"""What an FP8 KV cache (`model.kv_cache_dtype: fp8`) costs in quality, against the 16-bit cache.

    python -m orpheus_bench.kv_quality --out bench/results/h200-kv-fp8 [--model random:orpheus-3b|DIR]

1. The decode kernel: the Triton kernel over an FP8 cache against the reference attention over
   the same FP8 cache (the kernel's own error), and against a bf16 cache (the format's).
2. The model, teacher-forced: `--rows` streams of a prompt then `--steps` audio tokens, generated
   once over a bf16 cache (temperature 0.6 within each frame position's codebook); the same
   tokens are then fed over an FP8 cache. Per position: the logits' relative error, the KL
   divergence of the sampling distributions, and token agreement (the argmax, and a sample
   drawn with the same noise from both).
3. Streamed SNR: the codes each cache would have sampled at each position decoded by SNAC, the
   FP8 stream's audio against the bf16 one's.
On random weights the logits are near-uniform, so (2) and (3) bound the numeric error only; run it
with a real Orpheus checkpoint (`--model DIR`) before turning FP8 on for speech that matters.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from orpheus_bench.results import command_line, header, log, write_json
from orpheus_bench.server_parts import (FP8, KVCache, SnacCodec, decode_attention, decode_attention_reference,
                                        load_model, quantize_to_fp8, relative_difference)
from orpheus_tts import orpheus

TEMPERATURE = 0.6


def kernel_check(device: torch.device) -> dict:
    """The Triton kernel over FP8 and bf16 caches against the reference attention (3B head shape)."""
    torch.manual_seed(0)
    slots, heads, kv_heads, tokens, dim = 9, 24, 8, 1536, 128
    lengths = torch.tensor([1, 7, 255, 256, 257, 700, 1024, 1536], device=device)
    rows = torch.tensor([3, 0, 8, 1, 5, 2, 7, 4], device=device)
    q = torch.randn(len(rows), heads, dim, device=device, dtype=torch.bfloat16)
    full = KVCache(1, slots - 1, kv_heads, tokens, dim, torch.bfloat16, device).layers[0]
    fp8 = KVCache(1, slots - 1, kv_heads, tokens, dim, FP8, device).layers[0]
    every = torch.arange(tokens, device=device)
    for slot in range(slots):
        k = torch.randn(tokens, kv_heads, dim, device=device) * 4
        v = torch.randn(tokens, kv_heads, dim, device=device)
        for layer in (full, fp8):
            layer.write(torch.full_like(every, slot), every, k, v)
    out = {}
    for name, layer in (("bf16", full), ("fp8", fp8)):
        got = decode_attention(q, layer, rows, lengths).float()
        want = decode_attention_reference(q.float(), layer, rows, lengths).float()
        out[f"kernel_vs_reference_rel_{name}"] = relative_difference(got, want)
    out["fp8_vs_bf16_cache_rel"] = relative_difference(decode_attention(q, fp8, rows, lengths),
                                                       decode_attention(q, full, rows, lengths))
    return out


def frame_rows(position: int) -> slice:
    """The ids the model may emit at a frame position: that position's codebook."""
    start = orpheus.AUDIO_TOKEN_BASE + position * orpheus.CODEBOOK_SIZE
    return slice(start, start + orpheus.CODEBOOK_SIZE)


@torch.inference_mode()
def teacher_forced(model, rows: int, prompt_len: int, steps: int, device: torch.device) -> dict:
    """Generate over bf16, replay the same tokens over FP8; compare every position's distribution."""
    args = model.args
    total = prompt_len + steps
    gen = torch.Generator(device=device).manual_seed(0)
    prompts = torch.randint(1000, 100_000, (rows, prompt_len), device=device, generator=gen)
    caches = {name: KVCache(args.n_layers, rows, args.n_kv_heads, total, args.head_dim, dtype, device)
              for name, dtype in (("bf16", torch.bfloat16), ("fp8", FP8))}
    slots = torch.arange(rows, device=device)
    hidden = {}
    for name, cache in caches.items():
        batch = model.make_batch(slots, torch.zeros_like(slots), torch.full_like(slots, prompt_len), prompt_len)
        hidden[name] = model(prompts, batch, cache)[:, -1]
    stats = {"rel": [], "kl": [], "argmax_agree": [], "sample_agree": []}
    codes = {"bf16": [], "fp8": []}
    for step in range(steps):
        position = step % orpheus.TOKENS_PER_FRAME
        logits = {name: model.logits_for_rows(h, frame_rows(position)) for name, h in hidden.items()}
        noise = -torch.log(-torch.log(torch.rand(logits["bf16"].shape, device=device, generator=gen)))  # Gumbel
        picked = {name: (lg / TEMPERATURE + noise).argmax(-1) for name, lg in logits.items()}
        for name in codes:
            codes[name].append(picked[name])
        logp = {name: torch.log_softmax(lg / TEMPERATURE, -1) for name, lg in logits.items()}
        stats["rel"].append(relative_difference(logits["fp8"], logits["bf16"]))
        stats["kl"].append(float((logp["bf16"].exp() * (logp["bf16"] - logp["fp8"])).sum(-1).mean()))
        stats["argmax_agree"].append(float((logits["fp8"].argmax(-1) == logits["bf16"].argmax(-1)).float().mean()))
        stats["sample_agree"].append(float((picked["fp8"] == picked["bf16"]).float().mean()))
        token = (picked["bf16"] + frame_rows(position).start)[:, None]  # both continue on bf16's choice
        for name, cache in caches.items():
            batch = model.make_decode_batch(slots, torch.full_like(slots, prompt_len + step))
            hidden[name] = model(token, batch, cache)[:, 0]
    summary = {key: {"mean": sum(v) / len(v), "worst": (min(v) if "agree" in key else max(v))}
               for key, v in stats.items()}
    frames = steps // orpheus.TOKENS_PER_FRAME * orpheus.TOKENS_PER_FRAME
    stacked = {name: torch.stack(c[:frames], dim=1).view(rows, -1, orpheus.TOKENS_PER_FRAME)
               for name, c in codes.items()}
    return {"rows": rows, "prompt_tokens": prompt_len, "audio_tokens": steps, **summary}, stacked


def streamed_snr_db(codes: dict, codec_path: str, device: torch.device) -> dict:
    """SNR of the FP8 stream's audio against the bf16 one's (same positions, SNAC decoded)."""
    codec = SnacCodec.load(codec_path, device, noise=False)
    audio = {name: codec.decode(c) for name, c in codes.items()}
    signal, error = audio["bf16"].pow(2).sum(-1), (audio["fp8"] - audio["bf16"]).pow(2).sum(-1)
    per_row = (10 * torch.log10(signal / error.clamp(min=1e-20))).tolist()
    identical = sum(1 for e in error.tolist() if e == 0.0)
    finite = [x for x in per_row if math.isfinite(x) and x < 200]
    return {"per_row_db": per_row, "rows_identical": identical,
            "mean_db_of_differing_rows": sum(finite) / len(finite) if finite else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="random:orpheus-3b")
    p.add_argument("--snac", default="random")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=700, help="audio tokens per row (700 = 100 frames, 8.5 s)")
    p.add_argument("--weights", choices=("fp8", "bf16"), default="fp8", help="the weights' precision")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the code (the reference attention only)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results = header(device, command_line("orpheus_bench.kv_quality", argv))
    results["kernel"] = kernel_check(device)
    log("kernel", results["kernel"])
    model = load_model(args.model, device, torch.bfloat16, max_positions=args.prompt_tokens + args.steps + 8)
    if args.weights == "fp8" and device.type == "cuda":
        results["fp8_weight_scaling"] = quantize_to_fp8(model)
    results["model"] = args.model
    results["teacher_forced"], codes = teacher_forced(model, args.rows, args.prompt_tokens, args.steps, device)
    log("teacher forced", results["teacher_forced"])
    del model
    torch.cuda.empty_cache()
    results["streamed_snr"] = streamed_snr_db(codes, args.snac, device)
    log("streamed SNR", results["streamed_snr"])
    write_json(Path(args.out) / "kv_quality.json", results)


if __name__ == "__main__":
    main()
