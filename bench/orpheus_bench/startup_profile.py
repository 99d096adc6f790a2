"""Where start-up from a built engine spends its time: a stack-sampling profile of one start.

    python -m orpheus_bench.startup_profile --engine DIR --out bench/results/h200-startup-profile [--set K=V ...]

Starts the engine in this process as `serve --engine` does (fresh, empty Inductor and Triton
caches, no C compiler), samples the starting thread's stack every few milliseconds (cProfile
would distort Dynamo's Python-heavy tracing), and writes the phases, the compile counters (cache
hits, misses, bypasses) and the functions that held the most samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

_SAMPLE_S = 0.005


class StackSampler:
    """Counts, for one thread, how often each function is on the stack (inclusive) and on top."""

    def __init__(self, thread_id: int):
        self.thread_id = thread_id
        self.inclusive: collections.Counter = collections.Counter()
        self.leaf: collections.Counter = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            self.samples += 1
            seen = set()
            top = True
            while frame is not None:
                code = frame.f_code
                name = f"{_short(code.co_filename)}:{code.co_firstlineno}:{code.co_name}"
                if top:
                    self.leaf[name] += 1
                    top = False
                if name not in seen:
                    seen.add(name)
                    self.inclusive[name] += 1
                frame = frame.f_back

    def report(self, n: int) -> dict:
        seconds = _SAMPLE_S
        return {"samples": self.samples, "sample_s": _SAMPLE_S,
                "inclusive_s": [(k, round(v * seconds, 2)) for k, v in self.inclusive.most_common(n)],
                "leaf_s": [(k, round(v * seconds, 2)) for k, v in self.leaf.most_common(n)]}


def _short(path: str) -> str:
    for marker in ("site-packages/", "orpheus_tts/", "orpheus_bench/", "site/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def time_codec_graphs(codec, repeats: int = 50) -> dict:
    """Mean time of one captured decode of four-frame windows, per batch size: the codec's speed
    after this start-up, whichever decoder (AOT or torch.compile) its graphs hold."""
    import torch

    if not codec._graphs:
        return {}
    frames = max(n for n, _ in codec._graphs)
    times = {}
    for batch in (16, 64):
        if (frames, batch) not in codec._graphs:
            continue
        codes = torch.randint(0, 4096, (batch, frames, 7), device=codec.device)
        for _ in range(5):
            codec.decode(codes)
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeats):
            codec.decode(codes)
        end.record()
        torch.cuda.synchronize()
        times[f"{batch}x{frames}"] = round(begin.elapsed_time(end) / repeats, 3)
    return times


def time_compiled_decoder(codec, snac_path: str, frames: int = 4, repeats: int = 50) -> dict:
    """The same measurement with the torch.compile decoder (the path without an engine), captured
    here by hand for one window length only, so the AOT decoders' speed has its reference."""
    import torch

    from orpheus_tts.codec.snac_codec import SnacCodec

    compiled = SnacCodec.load(snac_path, codec.device, noise=codec.noise, dtype=codec.dtype)
    compiled.compile()
    times = {}
    with torch.inference_mode():
        for batch in (64, 16):
            codes = torch.randint(0, 4096, (batch, frames, 7), device=codec.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    compiled._decode_codes(codes, compiled.graph_decoder)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                compiled._decode_codes(codes, compiled.graph_decoder)
            for _ in range(5):
                graph.replay()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(repeats):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            times[f"{batch}x{frames}"] = round(begin.elapsed_time(end) / repeats, 3)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--top", type=int, default=60)
    p.add_argument("--with-compiler", action="store_true", help="keep CC/CXX (default: none, as in the image)")
    p.add_argument("--compare-compiled-codec", action="store_true",
                   help="also time the torch.compile decoder's graphs (compiles it once, after start-up)")
    p.add_argument("--cache-log", help="write Inductor's and AOTAutograd's cache lookups (keys, details) here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        os.environ[name] = tempfile.mkdtemp(dir=work)
    if not args.with_compiler:
        os.environ["CC"] = os.environ["CXX"] = "/bin/false"
    if args.cache_log:
        handler = logging.FileHandler(args.cache_log)
        for name in ("torch._inductor.codecache", "torch._functorch._aot_autograd.autograd_cache"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.DEBUG)
    started = time.monotonic()
    with StackSampler(threading.get_ident()) as sampler:
        import torch

        from orpheus_tts.config import load_config, parse_set_flags
        from orpheus_tts.engine import Engine

        imported = time.monotonic() - started
        config = load_config(None, {**parse_set_flags(args.set), "engine.path": args.engine})
        engine = Engine.from_config(config).start()
        engine.warm_up()
        engine.stop()
    total = time.monotonic() - started
    codec_ms = time_codec_graphs(engine.codec)
    from torch._dynamo.utils import compile_times, counters

    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "commit": os.environ.get("GIT_COMMIT", ""), "settings": args.set,
              "command": "python -m orpheus_bench.startup_profile --engine ENGINE --out " + args.out
              + "".join(f" --set {s}" for s in args.set) + (" --with-compiler" if args.with_compiler else ""),
              "env": {k: v for k, v in os.environ.items() if k.startswith(("TORCHINDUCTOR_COMPILE", "ORPHEUS_"))},
              "total_s": round(total, 1), "import_s": round(imported, 1),
              "phases": {k: round(v, 2) for k, v in engine.phases.seconds.items()},
              "codec": {"graphs_of": engine.codec.graph_source, "graph_replay_ms": codec_ms},
              "counters": {k: dict(v) for k, v in counters.items()},
              "compile_times": compile_times(repr="str", aggregate=True),
              "profile": sampler.report(args.top)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.compare_compiled_codec:
        result["codec"]["compiled_graph_replay_ms"] = time_compiled_decoder(engine.codec, str(Path(args.engine) / "snac"))
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("total_s", "import_s", "phases", "codec", "counters")}, indent=1))
    print(result["compile_times"])
    for kind in ("inclusive_s", "leaf_s"):
        print(f"--- {kind}")
        for name, s in result["profile"][kind]:
            print(f"{s:8.2f}  {name}")


if __name__ == "__main__":
    main()
