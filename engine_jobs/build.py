"""Engine builder: one engine directory from a checkpoint, run by the operator's Job (and by
`orpheus-tts build-engine` for people without Kubernetes).

    python -m engine_jobs.build --model-source pvc:/sources/source-0/orpheus-3b-0.1-ft \\
        --snac-source pvc:/sources/source-0/snac_24khz --precision fp8 --backend torch \\
        --gpu-arch sm_90 --set scheduler.max_concurrent_sessions=256 --output /cache/1a2b3c4d5e6f7a8b

Steps: check the checkpoint (shapes, vocabulary, special tokens, SNAC config; headers only, so
a bad one fails in a second); write serving weights (fused, and FP8 with their scales for
`fp8`); on the target GPU, compile, capture and warm up for the buckets these settings imply,
and keep the compiled artifacts; write the manifest (with the model's voices: the build's `model.voices`,
else the checkpoint's `voices.json`, else the English eight) and, last, the COMPLETE marker; rename the
staging directory into place. The layout is `orpheus_tts.engine.engine_dir`'s.

Without the target GPU (`--compile auto`), the weights are written and the manifest lists the
compile as pending: a server then refuses the engine on a GPU unless `engine.on_mismatch=compile`.

Exit codes: 0 built (or already built for this hash), 2 invalid input, 3 not implemented
(`--backend tensorrt-llm`), 4 the output cannot be written, 5 the GPU compile or its checks failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from orpheus_tts.config import ConfigError, load_config, parse_set_flags
from orpheus_tts.engine import engine_dir as layout
from orpheus_tts.engine.loading import model_voices
from orpheus_tts.model.fp8 import FP8_MIN_COMPUTE_CAPABILITY

from engine_jobs import publish
from engine_jobs.sources import BuildError, parse_source

# Bump when this builder changes what it writes, so every engine is built again: the operator
# hashes it into the Job name (its copy, orpheus_operator/model_facts.py, is generated from this).
BUILDER_VERSION = "3"  # 3: the manifest records the LoRA pool (adapters.places, adapters.max_rank)
EXIT_INVALID, EXIT_NOT_IMPLEMENTED, EXIT_UNWRITABLE, EXIT_COMPILE = 2, 3, 4, 5
ROWWISE_MIN_COMPUTE_CAPABILITY = (9, 0)  # the FP8 scaling chosen when building without the GPU


class CompileError(Exception):
    """The GPU compile, capture or warm-up failed (exit 5)."""


def add_build_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-source", required=True, help="pvc:PATH, hub:REPO, demo or random:NAME")
    p.add_argument("--revision", help="hub revision of the model (required for hub:)")
    p.add_argument("--snac-source", default="hub:hubertsiuzdak/snac_24khz", help="pvc:PATH, hub:REPO, demo or random")
    p.add_argument("--snac-revision", default="main")
    p.add_argument("--precision", required=True, choices=["bf16", "fp8"])
    p.add_argument("--backend", default="torch", choices=["torch", "tensorrt-llm"])
    p.add_argument("--gpu-arch", required=True, help="the serving GPU: sm_89 (Ada), sm_90 (Hopper), ...")
    p.add_argument("--compile", default="auto", choices=["auto", "required", "skip"],
                   help="auto: compile where the target GPU is present; required: fail (exit 5) without it")
    p.add_argument("--snac-aot", action="store_true",
                   help="also compile the SNAC decoders ahead of time (AOTInductor; experimental: crashed "
                        "on an H200 with torch 2.11, see docs/performance.md); servers load them instead of tracing")
    p.add_argument("--config", help="the server's YAML config (the compiled buckets follow its settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a server setting, as serve takes")
    p.add_argument("--engine-hash", help="the operator's hash of these inputs (default: computed here)")
    p.add_argument("--output", required=True, help="engine directory to create, e.g. /cache/<hash>")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")


def compute_capability(gpu_arch: str) -> tuple[int, int]:
    """`sm_89` -> (8, 9), `sm_100` -> (10, 0)."""
    digits = gpu_arch.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


def plan(args: argparse.Namespace) -> tuple[dict, object]:
    """The manifest as far as it is known before any work, and the server config (validates all)."""
    if not args.gpu_arch.startswith("sm_") or not args.gpu_arch[3:].isdigit() or len(args.gpu_arch) < 5:
        raise BuildError(f"--gpu-arch must look like sm_89, got {args.gpu_arch!r}")
    if args.precision == "fp8" and compute_capability(args.gpu_arch) < FP8_MIN_COMPUTE_CAPABILITY:
        first = "sm_{}{}".format(*FP8_MIN_COMPUTE_CAPABILITY)
        raise BuildError(f"fp8 needs a GPU architecture with FP8 tensor cores ({first} and newer), "
                         f"not {args.gpu_arch}; use --precision bf16")
    try:
        overrides = parse_set_flags(args.set)
        overrides["model.quantization"] = "fp8" if args.precision == "fp8" else "none"
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        raise BuildError(f"server settings: {exc}") from None
    if config.engine.path or config.model.path != "demo" or config.codec.path != "demo":
        raise BuildError("the sources come from --model-source/--snac-source, not engine.path/model.path/codec.path")
    manifest = {
        "builderVersion": BUILDER_VERSION, "precision": args.precision, "backend": args.backend,
        "gpuArch": args.gpu_arch,
        "model": parse_source(args.model_source, args.revision, "--model-source").describe(),
        "snac": parse_source(args.snac_source, args.snac_revision, "--snac-source").describe(),
        "settings": layout.compiled_settings(config), "buckets": layout.buckets(config),
        "slotBudget": {"sessions": config.scheduler.max_concurrent_sessions,
                       "contextTokens": config.scheduler.max_context_tokens,
                       "maxBatch": config.scheduler.max_batch_size},
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest["engineHash"] = args.engine_hash or digest
    if args.engine_hash and Path(args.output).name != args.engine_hash:
        raise BuildError(f"--output {args.output} should end in the engine hash {args.engine_hash}")
    return manifest, config


def target_gpu(args: argparse.Namespace):
    """The CUDA device to compile on, or None (with the reason) when the compile cannot run here."""
    import torch

    if args.compile == "skip":
        return None, "--compile skip"
    if not torch.cuda.is_available():
        return None, "no GPU on this machine"
    found = layout.gpu_arch(torch.device("cuda", 0))
    if found != args.gpu_arch:
        return None, f"this GPU is {found}, the engine is for {args.gpu_arch}"
    return torch.device("cuda"), ""


def build(args: argparse.Namespace) -> int:
    manifest, config = plan(args)
    if args.dry_run:
        print(json.dumps(manifest, indent=2))
        return 0
    if args.backend == "tensorrt-llm":
        raise NotImplementedError("--backend tensorrt-llm: the TensorRT-LLM engine build is not implemented; "
                                  "use --backend torch")
    output = Path(args.output)
    with publish.output_lock(output):
        built = layout.read_complete(output)
        if built is not None and built.get("engineHash") == manifest["engineHash"]:
            print(f"engine {manifest['engineHash']} already built in {output}: nothing to do")
            return 0
        device, why_not = target_gpu(args)
        if device is None and args.compile == "required":
            raise CompileError(f"--compile required, but {why_not}")
        staging = publish.fresh_staging(output, os.getpid())
        try:
            from engine_jobs.compile_step import use_fresh_caches
            from engine_jobs.serving_weights import write_model, write_snac_dir

            use_fresh_caches(staging / ".work")
            started = time.monotonic()
            rowwise = None if device is not None else \
                compute_capability(args.gpu_arch) >= ROWWISE_MIN_COMPUTE_CAPABILITY
            manifest["model"].update(write_model(manifest, config, staging, device, rowwise))
            manifest["voices"] = [voice.record() for voice in model_voices(
                dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(staging / layout.MODEL_DIR))))]
            manifest["snac"].update(write_snac_dir(manifest, config, staging))
            manifest["weightsSeconds"] = round(time.monotonic() - started, 1)
            manifest["verified"] = ["checkpoint shapes, dtypes, vocabulary and special tokens", "SNAC config",
                                    "serving weights reload bit-exact"]
            manifest["pending"] = []
            if device is not None:
                from engine_jobs.compile_step import compile_engine

                try:
                    report = compile_engine(staging, config, snac_aot=args.snac_aot)
                except Exception as exc:  # noqa: BLE001 (any failure on the GPU is a failed compile, exit 5)
                    raise CompileError(f"compiling on {args.gpu_arch} failed: {type(exc).__name__}: {exc}") from exc
                manifest["verified"] += report.pop("verified")
                manifest["compile"] = report
                manifest["runtime"] = layout.runtime_facts(device)
            else:
                print(f"warning: weights only, the compile step needs the {args.gpu_arch} GPU ({why_not}); "
                      f"a server compiles at start only with engine.on_mismatch=compile", file=sys.stderr)
                manifest["pending"] = [layout.COMPILE_PENDING]
                manifest["runtime"] = {"gpuArch": args.gpu_arch}
            shutil.rmtree(staging / ".work", ignore_errors=True)
            manifest["createdAt"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            layout.write_manifest(staging, manifest)
            publish.publish(staging, output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-built stays behind
            raise
    print(f"engine {manifest['engineHash']} built in {output}" + (" (compile pending)" if manifest["pending"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_jobs.build", description=__doc__.split("\n\n")[0])
    add_build_flags(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Build, turning each failure into its message and exit code."""
    try:
        return build(args)
    except (BuildError, ValueError) as exc:  # CheckpointError and EngineError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except NotImplementedError as exc:
        print(f"error: not implemented: {exc}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    except publish.OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNWRITABLE
    except OSError as exc:
        reason = publish.unwritable(exc, Path(args.output))
        if reason is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_UNWRITABLE
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_COMPILE


if __name__ == "__main__":
    sys.exit(main())
