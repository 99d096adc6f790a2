"""Engine benchmark: checks, then times the Orpheus-3B decode step, SNAC and in-engine TTFB.

    python -m orpheus_bench.engine --model random:orpheus-3b --out bench/results/h100

Runs on one GPU in one call (random weights, no download). In order: copy bandwidth;
correctness checks (Triton decode attention vs SDPA, CUDA graph replay vs eager, FP8 logits
vs bf16, fp16 SNAC vs fp32); the decode step swept over batch sizes and context lengths in
bf16 and FP8 (step time, tokens/s, bytes moved, bandwidth use); SNAC decode time per batch;
the `transformers` baseline; in-engine TTFB and real-time share at rising concurrency.
Everything lands in one JSON (device, torch version, git commit, command) plus PNG plots.
This module only parses the flags and runs the sections; each section is a module of its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from pathlib import Path

import torch

from orpheus_bench import plots
from orpheus_bench.baseline import transformers_baseline
from orpheus_bench.checks import check_attention
from orpheus_bench.live_ab import load_runs
from orpheus_bench.results import command_line, header, log, write_json
from orpheus_bench.snac import snac_bench
from orpheus_bench.step_sweep import sweeps
from orpheus_bench.timing import copy_bandwidth


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orpheus_bench.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:orpheus-3b")
    parser.add_argument("--out", default="bench/results/run")
    parser.add_argument("--batches", default="1,8,16,32,64,128,256")
    parser.add_argument("--contexts", default="128,512,1024")
    parser.add_argument("--levels", default="1,16,64,128,200,256")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2, help="load: streams each closed-loop worker makes")
    parser.add_argument("--sections", default="sweep,snac,baseline,load",
                        help="what to run, in this order: any of sweep,snac,baseline,load")
    parser.add_argument("--skip", default="", help="sections to leave out")
    parser.add_argument("--precisions", default="bf16,fp8",
                        help="sweep: any of bf16, fp8 (weights) and fp8kv (FP8 weights over an FP8 KV cache)")
    parser.add_argument("--lora-places", default="", metavar="P,P",
                        help="sweep: also FP8 with a pool of P rank-64 LoRA adapters, the rows spread over them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="load: an engine config override, e.g. codec.compile=false")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="load: run it again with this override too (repeatable), e.g. "
                             "scheduler.overlap_steps=false (live settings reuse the running engine)")
    parser.add_argument("--load-adapters", type=int, default=0, metavar="N",
                        help="load: N random rank-64 LoRA adapters resident, the streams spread over them")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--load-quantization", default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    skip = set(filter(None, opts.skip.split(",")))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(**header(torch.device("cuda"), command_line("orpheus_bench.engine", argv)),
                   checks={}, graph_capture_s={}, eager_step_ms=[], step_sweep=[])
    batches = [int(b) for b in opts.batches.split(",")]
    contexts = [int(c) for c in opts.contexts.split(",")]

    def save():
        write_json(out / "engine_bench.json", results)

    results["copy_bandwidth_bytes_per_s"] = bw = copy_bandwidth()
    log(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    check_attention(results)
    log("checks", results["checks"])
    overrides = dict(item.split("=", 1) for item in opts.set)
    sections = {
        "sweep": lambda: sweeps(opts.model, opts.precisions, opts.compile, results, batches, contexts, bw, save,
                                [int(p) for p in opts.lora_places.split(",") if p]),
        "snac": lambda: snac_bench(results),
        "baseline": lambda: transformers_baseline(results, [1, 16, 64]),
        "load": lambda: load_runs(results, [int(x) for x in opts.levels.split(",")], opts.max_batch,
                                  opts.load_quantization, opts.requests, opts.variant, overrides,
                                  opts.load_adapters),
    }
    for name in opts.sections.split(","):
        if name in skip:
            continue
        started = time.time()
        try:  # one failing section must not cost the others' results
            sections[name]()
        except Exception:  # noqa: BLE001
            log(f"section {name} failed:\n{traceback.format_exc()}")
            results.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
        results.setdefault("section_s", {})[name] = time.time() - started
        gc.collect()
        torch.cuda.empty_cache()
        save()
    try:
        plots.engine_bench(results, out)
    except Exception as exc:  # noqa: BLE001 (matplotlib missing or a plot bug: keep the JSON)
        log(f"plots failed: {exc}")
    save()
    log(json.dumps(results["checks"], indent=1))


if __name__ == "__main__":
    main()
