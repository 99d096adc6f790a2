"""Decode-step time of the demo model on CPU at a few batch sizes (the engine's own runner):
the one step timing that needs no GPU, for the demo and to catch a slower step in CI.

    python -m orpheus_bench.cpu_step --out bench/results/cpu-demo-step.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from orpheus_bench.results import command_line, header, write_json
from orpheus_bench.server_parts import load_model
from orpheus_bench.synthetic import load_rows, synthetic_runner

MAX_TOKENS = 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orpheus_bench.cpu_step", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/cpu-demo-step.json")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per batch (after 5 untimed)")
    opts = parser.parse_args(argv)
    cpu = torch.device("cpu")
    model = load_model("demo", cpu, torch.float32, max_positions=MAX_TOKENS)
    batches = [int(b) for b in opts.batches.split(",")]
    runner = synthetic_runner(model, max(batches), MAX_TOKENS, compiled=False, dtype=torch.float32)
    rows = []
    for b in batches:
        slots = torch.from_numpy(load_rows(runner, b, opts.context))
        with torch.inference_mode():
            for _ in range(5):
                runner.decode_step(slots)
            times = []
            for _ in range(opts.steps):  # each step moves the rows one position on: steps + 5 past `context`
                t = time.perf_counter()
                runner.decode_step(slots)
                times.append(time.perf_counter() - t)
        ms = float(np.median(times) * 1e3)
        rows.append(dict(batch=b, context=opts.context, step_ms=ms, tokens_per_s=b / ms * 1e3))
        print(f"demo model, CPU, batch {b}, context {opts.context}: {ms:.2f} ms/step, {b / ms * 1e3:.0f} tok/s")
    result = dict(**header(cpu, command_line("orpheus_bench.cpu_step", argv)), steps=rows)
    write_json(Path(opts.out), result)


if __name__ == "__main__":
    main()
