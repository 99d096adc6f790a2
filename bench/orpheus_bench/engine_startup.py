"""Build an engine, then time `serve --engine` to SERVING with empty local caches.

    python -m orpheus_bench.engine_startup --out bench/results/h200-engine-startup [--engine-dir DIR]

1. `python -m engine_jobs.build` from random Orpheus-3B + SNAC weights, FP8, for the GPU here.
2. `orpheus-tts serve --engine` with TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR new and empty
   and no C compiler (CC=/bin/false), polled through gRPC health: process start to SERVING.
3. Same tokens: the engine's FP8 weights against in-process quantisation (bit for bit), and the
   same seeded speech from `say --engine` and `say --set model.quantization=fp8` (eager, no noise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ["scheduler.max_concurrent_sessions=256", "scheduler.max_batch_size=256",
            "scheduler.max_context_tokens=2048"]


def sets(items):
    return [x for s in items for x in ("--set", s)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--engine-dir", help="build the engine here and keep it (default: a temporary directory)")
    p.add_argument("--skip-same-tokens", action="store_true")
    p.add_argument("--same-tokens-only", action="store_true",
                   help="only the same-tokens check, on --engine-dir, added to --out's results.json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    arch = "sm_{}{}".format(*torch.cuda.get_device_capability(0))
    work = Path(tempfile.mkdtemp())
    if args.same_tokens_only:
        result = json.loads((out / "results.json").read_text())
        result["same_tokens"] = same_tokens(Path(args.engine_dir), work)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["same_tokens"], indent=1))
        return
    engine = Path(args.engine_dir) if args.engine_dir else work / "engine"
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "commit": os.environ.get("GIT_COMMIT", ""), "settings": SETTINGS,
              "command": "python -m orpheus_bench.engine_startup --out " + str(out)}
    result["build"] = build_engine(engine, SETTINGS, arch)
    print(json.dumps(result["build"], indent=1), flush=True)
    save = lambda: (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731
    save()  # after each stage: a later one may run out of time
    if result["build"]["rc"] == 0:
        manifest = json.loads((engine / "engine.json").read_text())
        result["manifest"] = {k: manifest.get(k) for k in ("compile", "weightsSeconds", "verified", "pending",
                                                            "runtime", "buckets")}
        result["engine_bytes"] = sum(f.stat().st_size for f in engine.rglob("*") if f.is_file())
        result["serve"] = serve_once(engine, work)
        print(json.dumps(result["serve"], indent=1), flush=True)
        save()
        plot_history(out, result)
        if not args.skip_same_tokens:
            result["same_tokens"] = same_tokens(engine, work)
            save()
    print(json.dumps(result, indent=1)[-4000:])


def build_engine(engine: Path, settings: list[str], arch: str) -> dict:
    """`python -m engine_jobs.build` from random Orpheus-3B + SNAC weights, FP8, compiled for `arch`."""
    t = time.monotonic()
    built = subprocess.run([sys.executable, "-m", "engine_jobs.build", "--model-source", "random:orpheus-3b",
                            "--snac-source", "random", "--precision", "fp8", "--gpu-arch", arch,
                            "--compile", "required", "--output", str(engine), *sets(settings)],
                           capture_output=True, text=True)
    return {"seconds": round(time.monotonic() - t, 1), "rc": built.returncode,
            "tail": (built.stdout + built.stderr)[-3000:]}


def breakdown_phases(result: dict) -> dict[str, float]:
    """{phase: seconds} from the server's `start-up ... s: weights 3.8 s, ...` log line."""
    line = (result.get("serve", {}).get("breakdown") or [""])[0]
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", line.partition(":")[2])}


def plot_history(out: Path, result: dict) -> None:
    """startup.png: this run's phases under those of earlier runs kept beside it (results-<commit>.json)."""
    from orpheus_bench.plots import startup_phases

    runs = [(f"{old.get('commit', path.stem)}", breakdown_phases(old))
            for path in sorted(out.glob("results-*.json")) for old in [json.loads(path.read_text())]]
    runs.append((f"{result.get('commit') or 'this run'} (this run)", breakdown_phases(result)))
    startup_phases([run for run in runs if run[1]], out / "startup.png")


def start_server(engine: Path, work: Path, settings: list[str], port: int = 50071, metrics_port: int = 9171,
                 http_port: int = -1, limit_s: float = 400) -> tuple[subprocess.Popen, float | None, Path]:
    """`serve --engine` with new empty compile caches and no C compiler (HTTP off unless `http_port`),
    polled through gRPC health: (process, seconds from its start to SERVING or None, its log)."""
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env[name] = tempfile.mkdtemp(dir=work)
    log_path = work / "serve.log"
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orpheus_tts.cli", "serve", "--engine", str(engine),
                             "--grpc-port", str(port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
                             *sets(settings)], env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    while time.monotonic() - t < limit_s and proc.poll() is None:
        rc = subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "health", "--server", f"localhost:{port}",
                             "--timeout", "1"], capture_output=True).returncode
        if rc == 0:
            return proc, round(time.monotonic() - t, 1), log_path
        time.sleep(0.5)
    return proc, None, log_path


def serve_once(engine: Path, work: Path) -> dict:
    proc, serving_s, log_path = start_server(engine, work, SETTINGS)
    say = subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "say", "Hello from a built engine.", "-o",
                          str(work / "served.wav"), "--server", "localhost:50071"], capture_output=True, text=True)
    proc.terminate()
    proc.wait(60)
    text = log_path.read_text()
    breakdown = re.findall(r"start-up [^\n]*", text)
    return {"serving_s": serving_s, "breakdown": breakdown, "say": (say.stdout + say.stderr)[-300:],
            "log_tail": text[-3000:]}


def same_tokens(engine: Path, work: Path) -> dict:
    import torch

    from orpheus_tts.model.fp8 import quantize_to_fp8
    from orpheus_tts.model.loader import load_model
    from orpheus_tts.model.serving_weights import load_serving_weights

    device = torch.device("cuda")
    built = load_serving_weights(str(engine / "model"), device, torch.bfloat16, 64).state_dict()
    ref = load_model("random:orpheus-3b", device, torch.bfloat16, 64)
    quantize_to_fp8(ref)
    differ = [n for n, v in ref.state_dict().items() if not torch.equal(v.view(torch.uint8), built[n].view(torch.uint8))]
    del built, ref
    torch.cuda.empty_cache()
    eager = ["model.compile=false", "model.cuda_graphs=false", "codec.noise=false", "scheduler.adaptive_chunks=false"]
    digests = {}
    for name, extra in (("engine", ["--engine", str(engine), "--set", "engine.on_mismatch=compile"]),
                        ("in_process", ["--model", "random:orpheus-3b", "--snac", "random",
                                        "--set", "model.quantization=fp8"])):
        wav = work / f"{name}.wav"
        r = subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "say", "Same tokens, same seed.", "-o", str(wav),
                            "--seed", "7", *extra, *sets(eager)], capture_output=True, text=True)
        digests[name] = hashlib.sha256(wav.read_bytes()).hexdigest() if wav.exists() else (r.stdout + r.stderr)[-500:]
    return {"weights_differ": differ[:5], "weights_identical": not differ, "speech_sha256": digests,
            "speech_identical": digests["engine"] == digests["in_process"]}


if __name__ == "__main__":
    main()
