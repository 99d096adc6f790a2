"""The body of `orpheus-tts bench`: picks the target, runs the load, writes the results.

The flags are parsed by the server's command line (`orpheus_tts.cli`), so `orpheus-tts bench
--help` works without this package; this module turns them into a run and its JSON (always)
and PNG (with matplotlib).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from orpheus_bench import plots
from orpheus_bench.load import EngineTarget, GrpcTarget, run_bench
from orpheus_bench.workload import DEFAULT_TEXT, Workload
from orpheus_bench.results import git_commit, write_json


def parse_levels(text: str) -> list[int]:
    """`--levels 1,256,450`: positive concurrencies, in the order given."""
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--levels must be comma-separated whole numbers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"--levels must all be at least 1, got {text!r}")
    return levels


def main(args, config, command: str) -> int:
    """Run from `orpheus-tts bench`; exits 0 when every level had a successful stream."""
    if args.concurrent < 1 or args.requests < 1:
        raise ValueError("--concurrent and --requests must be at least 1")
    if not args.in_process and not args.server:
        raise ValueError("give --server HOST:PORT or --in-process")
    levels = parse_levels(args.levels) if getattr(args, "levels", None) else None
    text = args.text or DEFAULT_TEXT
    workload = Workload(args.workload, text)
    target_ttfb_ms = args.target_ttfb_ms or config.active_profile.target_ttfb_ms
    if args.in_process:
        if args.concurrent > config.scheduler.max_concurrent_sessions:
            print(f"note: --concurrent {args.concurrent} exceeds scheduler.max_concurrent_sessions="
                  f"{config.scheduler.max_concurrent_sessions}; the rest queue", file=sys.stderr)
        target, where = EngineTarget(config, not args.stop_at_end_of_speech), "in-process"
    else:
        target, where = GrpcTarget(args.server, args.timeout, not args.stop_at_end_of_speech), args.server
    started = time.time()
    out = asyncio.run(run_bench(target, args.mode, args.concurrent, args.requests, workload, args.stagger_s,
                                target_ttfb_ms, capacity=args.capacity, arrival_rates=tuple(args.arrival_rate),
                                duration_s=args.duration_s, levels=levels))
    results = dict(command=command, git_commit=git_commit(), target=where, mode=args.mode,
                   workload=dict(**workload.describe(), concurrent=args.concurrent, levels=levels,
                                 requests_per_stream=args.requests, stagger_s=args.stagger_s,
                                 end_of_speech_suppressed=not args.stop_at_end_of_speech,
                                 arrival_rates_per_s=args.arrival_rate, open_loop_duration_s=args.duration_s),
                   profile=config.profile, target_ttfb_ms=target_ttfb_ms,
                   started_unix=started, duration_s=time.time() - started, **out)
    output = Path(args.output)
    write_json(output, results)
    print(f"wrote {output}")
    png = output.with_suffix(".png")
    if plots.load_levels(results["levels"], target_ttfb_ms, png):
        print(f"wrote {png}")
    else:
        print("note: matplotlib is not installed (pip install 'orpheus-tts[bench]'); no PNG written")
    rows = results["levels"] + results.get("open_loop", [])
    return 0 if all(row["success_rate"] > 0 for row in rows) else 1
