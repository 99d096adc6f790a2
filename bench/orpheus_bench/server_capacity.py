"""Capacity through the real server: build an engine, serve it, and load it over gRPC.

    python -m orpheus_bench.server_capacity --out bench/results/h200-capacity \\
        [--slots 512] [--context 1536] [--levels 1,256,450,512] [--stages scaling,overload,apis]
        [--engine-dir DIR] [--set KEY=VALUE ...]

1. `python -m engine_jobs.build` (random Orpheus-3B + SNAC weights, FP8) for the slots given, unless
   `--engine-dir` already holds a finished engine (its manifest decides whether it fits); with
   adapters, one engine per count (`DIR-lora-N`: the pool's places are compiled in).
2. `orpheus-tts serve --engine` (empty compile caches), timed to SERVING.
3. The stages, in order:
   - `scaling`: `orpheus-tts bench --mode scaling --workload mixed --levels ...` over gRPC, the capacity
     issue's mixed workload, closed loop, chunk by chunk against a player clock;
   - `overload`: `--mode overload` at 1.5x and 2x the capacity the server itself estimates
     (`orpheus_tts_capacity_streams`), so what is refused and what stalls at the excess is measured
     against the server's own figure;
   - `apis`: the same mixed workload through gRPC, HTTP and WebSocket, one bench run each
     (`--api-levels ...`), the HTTP issue's comparison.
The server's metrics (capacity, saturation, refusals, queue wait, its own TTFB) are scraped after
each bench run, and how late its event loop ran during the run (`loop_lag`, from the histogram's
change). With `--adapters 0,8,32` the server is started once per count (N random rank-64 LoRA
adapters, the streams spread over them) and the stages run against each: the LoRA issue's cost per
step through the server. Each stage's result is written as it ends: a later one may run out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from orpheus_bench.engine_startup import build_engine, sets, start_server
from orpheus_bench.lora_adapters import write_adapters
from orpheus_tts.engine.engine_dir import COMPLETE
from orpheus_tts.model.llama import ModelArgs

PORT, HTTP_PORT, METRICS_PORT = 50071, 8071, 9171
STAGES = ("scaling", "overload", "apis")
SCRAPED = ("orpheus_tts_capacity_streams", "orpheus_tts_ttfb_seconds_sum", "orpheus_tts_ttfb_seconds_count",
           "orpheus_tts_event_loop_lag_seconds", "orpheus_tts_saturation", "orpheus_tts_refused_requests_total",
           "orpheus_tts_queue_seconds_sum", "orpheus_tts_queue_seconds_count", "orpheus_tts_requests_total",
           "orpheus_tts_sessions_total", "orpheus_tts_step_seconds_sum", "orpheus_tts_step_seconds_count",
           "orpheus_tts_batch_size_sum", "orpheus_tts_batch_size_count", "orpheus_tts_adapter_sessions_total",
           "orpheus_tts_step_cost_seconds", "orpheus_tts_stream_context_tokens")


def scrape() -> dict[str, float]:
    """The server's own figures, one per series, as `{name{labels}: value}`."""
    text = urllib.request.urlopen(f"http://localhost:{METRICS_PORT}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(SCRAPED)}


def server_ttfb_ms(log_text: str) -> dict[str, dict[str, float]]:
    """Per API method, the two first-audio times the server logged for each request (`request ...
    method=M ... ttfb_ms=N sent_ms=S`): the engine's, from the session's start to its first audio,
    and the door's, from the request reaching its handler to that audio handed to the transport
    (`sent_`); p50 / p95 / p99 and how many. Set beside the client's figures, they tell the engine,
    the door, and the network with the client apart."""
    import numpy as np

    by_method: dict[str, list[tuple[int, int | None]]] = {}
    for method, ttfb, sent in re.findall(r" method=(\S+) .*? ttfb_ms=(\d+)(?: sent_ms=(\d+))?", log_text):
        by_method.setdefault(method, []).append((int(ttfb), int(sent) if sent else None))
    out = {}
    for method, rows in by_method.items():
        ttfb, sent = [t for t, _ in rows], [s for _, s in rows if s is not None]
        out[method] = {"n": len(rows), **{f"p{q}": float(np.percentile(ttfb, q)) for q in (50, 95, 99)},
                       **({f"sent_p{q}": float(np.percentile(sent, q)) for q in (50, 95, 99)} if sent else {})}
    return out


def loop_lag(before: dict[str, float], after: dict[str, float]) -> dict:
    """The server's event-loop lag samples taken between two scrapes: how many, and the share that
    ran later than each bucket's bound."""
    name = "orpheus_tts_event_loop_lag_seconds_bucket"
    buckets = {key: after[key] - before.get(key, 0.0) for key in after if key.startswith(name)}
    total = buckets.pop(f'{name}{{le="+Inf"}}', 0.0)
    over = {f"over_{_bound_ms(key):g}_ms": (total - n) / total if total else None for key, n in buckets.items()}
    return {"samples": total, **over}


def _bound_ms(bucket: str) -> float:
    return float(re.search(r'le="([^"]+)"', bucket)[1]) * 1e3


def bench(out: Path, name: str, args: list[str], limit_s: float, adapters: int, log_path: Path) -> dict:
    """One `orpheus-tts bench` run against the server (its streams over `adapters` adapters): its
    JSON, exit code, the metrics after and the loop's lag meanwhile."""
    output = out / f"{name}.json"
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "--log-level", "WARNING", "bench", "--server",
           f"localhost:{PORT}", "--http-server", f"localhost:{HTTP_PORT}", "--workload", "mixed", "--requests", "1",
           "--output", str(output), *args, "--adapters", str(adapters)]
    t, logged, before = time.monotonic(), log_path.stat().st_size, scrape()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s)
        rc, tail = run.returncode, (run.stdout + run.stderr)[-2000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = "timeout", str(exc.stderr or "")[-2000:]
    after = scrape()
    return {"command": "orpheus-tts bench " + " ".join(cmd[cmd.index("bench") + 1:]).replace(str(out), "OUT"),
            "rc": rc, "seconds": round(time.monotonic() - t, 1), "results": f"{name}.json" if output.exists() else None,
            "tail": tail, "metrics_after": after, "loop_lag": loop_lag(before, after),
            "server_ttfb_ms": server_ttfb_ms(_read_from(log_path, logged))}


def _read_from(path: Path, offset: int) -> str:
    """What was written to `path` since it was `offset` bytes long."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--slots", type=int, default=512)
    p.add_argument("--context", type=int, default=1536)
    p.add_argument("--levels", default="1,256,450,512")
    p.add_argument("--stages", default="scaling,overload", help=f"any of {','.join(STAGES)}, run in that order")
    p.add_argument("--api-levels", default="1,64,200,256", help="apis: the levels each door is loaded at")
    p.add_argument("--engine-dir", help="build the engine here, or serve the one already built here")
    p.add_argument("--bench-limit-s", type=float, default=240, help="seconds each bench run may take")
    p.add_argument("--adapters", default="0", metavar="N,N,...",
                   help="serve N random rank-64 LoRA adapters (adapters.max_resident=N) and spread the streams over "
                        "them; several counts start the server once for each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more engine settings")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    settings = [f"scheduler.max_concurrent_sessions={args.slots}", f"scheduler.max_batch_size={args.slots}",
                f"scheduler.max_context_tokens={args.context}", f"scheduler.max_pending_sessions={2 * args.slots}",
                *args.set]
    arch = "sm_{}{}".format(*torch.cuda.get_device_capability(0))
    work = Path(tempfile.mkdtemp())
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "commit": os.environ.get("GIT_COMMIT", ""), "settings": settings,
              "command": "python -m orpheus_bench.server_capacity " + " ".join(sys.argv[1:]).replace(str(out), "OUT")}
    save = lambda: (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731
    base = Path(args.engine_dir) if args.engine_dir else work / "engine"
    counts = [int(n) for n in args.adapters.split(",")]
    for adapters in counts:
        # One count: the results at the top level, as before; several: one section per count.
        section = result if len(counts) == 1 else result.setdefault(f"adapters-{adapters}", {})
        with_pool = list(settings)
        if adapters:  # the pool's places are compiled into the engine; the adapters are served beside it
            folder = work / f"adapters-{adapters}"
            write_adapters(folder, ModelArgs.from_name("orpheus-3b"), adapters, rank=64)
            with_pool += [f"adapters.dir={folder}", f"adapters.max_resident={adapters}"]
        engine = base.with_name(f"{base.name}-lora-{adapters}") if adapters else base
        if (engine / COMPLETE).exists():  # written last, by the rename that publishes it
            section["build"] = {"reused": str(engine).replace(str(out), "OUT"), "rc": 0}
        else:
            section["build"] = build_engine(engine, with_pool, arch)
        print(json.dumps(section["build"], indent=1), flush=True)
        save()
        if section["build"]["rc"] != 0:
            continue
        prefix = "" if len(counts) == 1 else f"adapters-{adapters}-"
        serve_stages(section, out, work, engine, with_pool, args, adapters, prefix, save)


def serve_stages(section: dict, out: Path, work: Path, engine: Path, settings: list[str], args, adapters: int,
                 prefix: str, save) -> None:
    """Start the server from `engine`, time it to SERVING, run the stages asked for, stop it."""
    proc, section["serving_s"], log_path = start_server(engine, work, settings, PORT, METRICS_PORT, HTTP_PORT)
    print(f"SERVING after {section['serving_s']} s", flush=True)
    section["startup_breakdown"] = re.findall(r"start-up [^\n]*", log_path.read_text())
    save()
    stages = args.stages.split(",")
    try:
        if section["serving_s"] is None:
            return
        runs = {"scaling": [("scaling", ["--mode", "scaling", "--levels", args.levels])],
                "overload": [("overload", ["--mode", "overload"])],  # against the capacity the server reports then
                # each door on its own, so the server's figures after each (its own TTFB, from a
                # session's arrival in the engine) tell the door's transport from the engine
                "apis": [(f"apis-{api}", ["--mode", "scaling", "--api", api, "--levels", args.api_levels])
                         for api in ("grpc", "http", "websocket")]}
        for stage in (s for s in STAGES if s in stages):
            for name, flags in runs[stage]:
                if stage == "overload":
                    flags = [*flags, "--capacity", str(int(scrape().get("orpheus_tts_capacity_streams", 0)))]
                section[name] = bench(out, prefix + name, flags, args.bench_limit_s, adapters, log_path)
                print(json.dumps(section[name], indent=1)[-3000:], flush=True)
                save()
    finally:
        proc.terminate()
        proc.wait(60)
        section["server_log_tail"] = log_path.read_text()[-4000:]
        save()

if __name__ == "__main__":
    main()
