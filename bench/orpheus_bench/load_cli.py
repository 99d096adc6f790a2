"""The body of `orpheus-tts bench`: picks the target, runs the load, writes the results.

The flags are parsed by the server's command line (`orpheus_tts.cli`), so `orpheus-tts bench
--help` works without this package; this module turns them into a run and its JSON (always)
and PNG (with matplotlib).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from orpheus_bench import plots
from orpheus_bench.clients import Clients, auto_processes
from orpheus_bench.load import run_bench
from orpheus_bench.targets import EngineTarget, GrpcTarget, HttpTarget, WebSocketTarget
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


STREAM_S = 10.0  # about how long a stream of either workload lasts at real time (open-loop sizing)
REMOTE_TARGETS = {"grpc": GrpcTarget, "http": HttpTarget, "websocket": WebSocketTarget}


def parse_apis(text: str) -> list[str]:
    """`--api grpc,http,websocket`: the server's doors to compare, each run on the same workload."""
    apis = [part.strip() for part in text.split(",")]
    unknown = [api for api in apis if api not in REMOTE_TARGETS]
    if unknown or len(set(apis)) != len(apis):
        raise ValueError(f"--api must be distinct names among {', '.join(REMOTE_TARGETS)}, got {text!r}")
    return apis


def main(args, config, command: str) -> int:
    """Run from `orpheus-tts bench`; exits 0 when every level had a successful stream."""
    if args.concurrent < 1 or args.requests < 1:
        raise ValueError("--concurrent and --requests must be at least 1")
    if not args.in_process and not args.server:
        raise ValueError("give --server HOST:PORT or --in-process")
    levels = parse_levels(args.levels) if getattr(args, "levels", None) else None
    apis = parse_apis(getattr(args, "api", None) or "grpc")
    args.adapters = getattr(args, "adapters", 0) or 0
    if args.adapters < 0:
        raise ValueError("--adapters must be 0 (the base model) or more")
    if args.in_process and apis != ["grpc"]:
        raise ValueError("--api needs --server: in-process runs have no API in the way")
    text = args.text or DEFAULT_TEXT
    target_ttfb_ms = args.target_ttfb_ms or config.active_profile.target_ttfb_ms
    ignore_eos = not args.stop_at_end_of_speech
    if args.in_process:
        if args.concurrent > config.scheduler.max_concurrent_sessions:
            print(f"note: --concurrent {args.concurrent} exceeds scheduler.max_concurrent_sessions="
                  f"{config.scheduler.max_concurrent_sessions}; the rest queue", file=sys.stderr)
        targets, where = {"in-process": EngineTarget(config, ignore_eos, args.adapters)}, "in-process"
    else:
        http = getattr(args, "http_server", None) or _http_address(args.server)
        targets = {api: REMOTE_TARGETS[api](args.server if api == "grpc" else http, args.timeout, ignore_eos,
                                             args.adapters, getattr(args, "api_key", None)) for api in apis}
        where = args.server
    processes = client_processes(args, levels)
    started = time.time()
    runs = {}
    for api, target in targets.items():  # each door gets the same texts, cancels and seeds
        runs[api] = asyncio.run(run_bench(Clients(target, processes), args.mode, args.concurrent, args.requests,
                                          Workload(args.workload, text), args.stagger_s, target_ttfb_ms,
                                          capacity=args.capacity, arrival_rates=tuple(args.arrival_rate),
                                          duration_s=args.duration_s, levels=levels))
    workload = Workload(args.workload, text)
    results = dict(command=command, git_commit=git_commit(), target=where, mode=args.mode,
                   workload=dict(**workload.describe(), concurrent=args.concurrent, levels=levels,
                                 requests_per_stream=args.requests, stagger_s=args.stagger_s,
                                 client_processes=processes,
                                 end_of_speech_suppressed=ignore_eos, adapters=args.adapters,
                                 arrival_rates_per_s=args.arrival_rate, open_loop_duration_s=args.duration_s),
                   profile=config.profile, target_ttfb_ms=target_ttfb_ms,
                   started_unix=started, duration_s=time.time() - started)
    if len(runs) == 1:
        (api, out), = runs.items()
        results.update(api=api, **out)
    else:  # every row says its door; `apis` keeps each door's whole run
        results.update(api=apis, apis=runs, http_target=http,
                       levels=[dict(row, api=api) for api, out in runs.items() for row in out["levels"]])
    output = Path(args.output)
    write_json(output, results)
    print(f"wrote {output}")
    png = output.with_suffix(".png")
    drawn = (plots.load_levels(results["levels"], target_ttfb_ms, png) if len(runs) == 1
             else plots.api_levels(runs, target_ttfb_ms, png))
    if drawn:
        print(f"wrote {png}")
    else:
        print("note: matplotlib is not installed (pip install 'orpheus-tts[bench]'); no PNG written")
    rows = [row for out in runs.values() for row in out["levels"] + out.get("open_loop", [])]
    return 0 if all(row["success_rate"] > 0 for row in rows) else 1


def client_processes(args, levels: list[int] | None) -> int:
    """`--client-processes`: as given; 0 (the default) is one per 64 streams of the largest level the
    run can reach (`clients.auto_processes`); always 1 in-process, where the engine is in this one."""
    asked = getattr(args, "client_processes", 0) or 0
    if asked < 0:
        raise ValueError(f"--client-processes must be 0 (automatic) or more, got {asked}")
    if args.in_process:
        if asked > 1:
            raise ValueError("--client-processes needs --server: in-process streams share the engine's process")
        return 1
    if asked:
        return asked
    largest = max(levels or [args.concurrent])
    if args.mode == "overload" and args.capacity:
        largest = max(largest, 2 * args.capacity)
    rates = [round(rate * STREAM_S) for rate in args.arrival_rate]  # about the streams in flight at once
    return auto_processes(max([largest, *rates]), os.cpu_count() or 1)


def _http_address(grpc_address: str) -> str:
    """The HTTP door of a server whose gRPC door is `grpc_address`: the same host, port 8000
    (`serve`'s default); `--http-server` says otherwise."""
    host = grpc_address.rsplit(":", 1)[0] if ":" in grpc_address else grpc_address
    return f"{host}:8000"
