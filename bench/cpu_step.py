"""Decode-step time of the demo model on CPU at a few batch sizes (the engine's own runner).

    python bench/cpu_step.py --out bench/results/cpu-demo-step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import load_rows  # noqa: E402

from orpheus_tts.engine.kv_cache import KVCache  # noqa: E402
from orpheus_tts.engine.runner import ModelRunner  # noqa: E402
from orpheus_tts.engine.sampler import Sampler  # noqa: E402
from orpheus_tts.model.loader import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/cpu-demo-step.json")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--context", type=int, default=256)
    opts = parser.parse_args()
    model = load_model("demo", torch.device("cpu"), torch.float32, max_positions=1024)
    a = model.args
    batches = [int(b) for b in opts.batches.split(",")]
    cache = KVCache(a.n_layers, max(batches), a.n_kv_heads, 1024, a.head_dim, torch.float32, "cpu")
    sampler = Sampler(model, max(batches) + 1)
    runner = ModelRunner(model, cache, sampler, max(batches), cuda_graphs=False)
    rows = []
    for b in batches:
        slots = torch.from_numpy(load_rows(runner, b, opts.context))
        with torch.inference_mode():
            for _ in range(5):
                runner.decode_step(slots)
            times = []
            for _ in range(50):  # each step moves the rows one position on: 55 past `context` at the end
                t = time.perf_counter()
                runner.decode_step(slots)
                times.append(time.perf_counter() - t)
        ms = float(np.median(times) * 1e3)
        rows.append(dict(batch=b, context=opts.context, step_ms=ms, tokens_per_s=b / ms * 1e3))
        print(f"demo model, CPU, batch {b}, context {opts.context}: {ms:.2f} ms/step, {b / ms * 1e3:.0f} tok/s")
    commit = os.environ.get("GIT_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                             text=True).stdout.strip()
    result = dict(device=f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                  torch=torch.__version__, git_commit=commit, command=" ".join(sys.argv), steps=rows)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
