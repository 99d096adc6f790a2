"""Engine builder: lays out one engine directory on the cache PVC, run by the operator's Job.

    python -m engine_jobs.build --model-source pvc:/sources/source-0/orpheus-3b-0.1-ft \\
        --snac-source hub:hubertsiuzdak/snac_24khz --snac-revision main \\
        --precision fp8 --backend torch --gpu-arch sm_89 \\
        --engine-hash 1a2b3c4d5e6f7a8b --output /cache/1a2b3c4d5e6f7a8b

The output directory, once complete, holds:

    model/        the Orpheus checkpoint (Hugging Face layout)
    snac/         the SNAC 24 kHz codec (config.json + pytorch_model.bin)
    engine.json   what was built from what; `"complete": true` is written last

What this version does: validates the arguments; copies a checkpoint from a mounted PVC
(`pvc:PATH`, hard links when on the same filesystem); fetches a hub repository
(`hub:REPO` + revision) with huggingface_hub when the image has it; validates the checkpoint
with the server's loader (engine_jobs/checkpoint.py); writes engine.json. A
directory that is already complete for the same hash is left as it is (a cache hit), and work
happens in a staging directory renamed into place at the end, so a half-written engine is
never mistaken for a built one.

What a later issue completes: `--backend tensorrt-llm` (compiling the TensorRT-LLM engine for
`--gpu-arch`; today it writes engine.json with `"complete": false` and exits 3), and FP8
pre-quantization (today FP8 is applied by the server when it loads bf16 weights).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
from pathlib import Path

from orpheus_tts.model.fp8 import FP8_MIN_COMPUTE_CAPABILITY

from engine_jobs.checkpoint import validate_model

# Bump when this builder changes what it writes, so every engine is built again: the operator
# hashes it into the Job name (its copy, orpheus_operator/model_facts.py, is generated from this).
BUILDER_VERSION = "1"
MANIFEST = "engine.json"
EXIT_INVALID = 2
EXIT_NOT_IMPLEMENTED = 3


class BuildError(Exception):
    """Something the person applying the voice must fix; the message says what."""


def parse_source(value: str, revision: str | None, what: str) -> dict:
    kind, sep, rest = value.partition(":")
    if not sep or not rest or kind not in ("hub", "pvc"):
        raise BuildError(f"{what} must be hub:REPO or pvc:PATH, got {value!r}")
    if kind == "hub":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+", rest):
            raise BuildError(f"{what}: {rest!r} is not a hub repository id (owner/name)")
        if not revision:
            raise BuildError(f"{what} {rest} needs a revision (a commit hash is best)")
        return {"hub": rest, "revision": revision}
    if not rest.startswith("/"):
        raise BuildError(f"{what}: PVC path {rest!r} must be absolute (where the claim is mounted)")
    return {"pvc": rest}


def compute_capability(gpu_arch: str) -> tuple[int, int]:
    """`sm_89` -> (8, 9), `sm_100` -> (10, 0)."""
    digits = gpu_arch.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine_jobs.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-source", required=True, help="hub:REPO or pvc:PATH (a mounted checkpoint directory)")
    p.add_argument("--revision", help="hub revision of the model (required for hub:)")
    p.add_argument("--snac-source", default="hub:hubertsiuzdak/snac_24khz", help="hub:REPO or pvc:PATH")
    p.add_argument("--snac-revision", default="main")
    p.add_argument("--precision", required=True, choices=["bf16", "fp8"])
    p.add_argument("--backend", required=True, choices=["torch", "tensorrt-llm"])
    p.add_argument("--gpu-arch", required=True, help="sm_80, sm_86, sm_89, sm_90, ...")
    p.add_argument("--engine-hash", help="the operator's hash of these inputs, recorded in engine.json")
    p.add_argument("--output", required=True, help="engine directory to create, e.g. /cache/<hash>")
    p.add_argument("--dry-run", action="store_true", help="validate and print engine.json; write nothing")
    return p.parse_args(argv)


def plan_manifest(args: argparse.Namespace) -> dict:
    """engine.json as it will be written, before any file is copied (validates everything)."""
    if not re.fullmatch(r"sm_\d{2,3}", args.gpu_arch):
        raise BuildError(f"--gpu-arch must look like sm_89, got {args.gpu_arch!r}")
    if args.precision == "fp8" and compute_capability(args.gpu_arch) < FP8_MIN_COMPUTE_CAPABILITY:
        first = "sm_{}{}".format(*FP8_MIN_COMPUTE_CAPABILITY)
        raise BuildError(f"fp8 needs one of the GPU architectures with FP8 tensor cores ({first} and newer), "
                         f"not {args.gpu_arch}; use --precision bf16")
    if args.engine_hash and Path(args.output).name != args.engine_hash:
        raise BuildError(f"--output {args.output} should end in the engine hash {args.engine_hash}")
    return {
        "engineHash": args.engine_hash,
        "builderVersion": BUILDER_VERSION,
        "precision": args.precision,
        "backend": args.backend,
        "gpuArch": args.gpu_arch,
        "model": parse_source(args.model_source, args.revision, "--model-source"),
        "snac": parse_source(args.snac_source, args.snac_revision, "--snac-source"),
        "layout": {"model": "model", "snac": "snac"},
        "pending": ["tensorrt-llm engine compile"] if args.backend == "tensorrt-llm" else [],
        "complete": False,
    }


def is_complete(output: Path, engine_hash: str | None) -> bool:
    try:
        manifest = json.loads((output / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return bool(manifest.get("complete")) and manifest.get("engineHash") == engine_hash


def copy_tree(src: Path, dst: Path) -> int:
    """Copy a checkpoint directory, hard-linking where possible; returns the bytes laid out."""
    if not src.is_dir():
        raise BuildError(f"{src} is not a directory (is the PVC mounted and the path right?)")
    total = 0
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        total += path.stat().st_size
    return total


def fetch_hub(repo: str, revision: str, dst: Path) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BuildError("hub sources need huggingface_hub in the image; use a pvc: source meanwhile") from None
    snapshot_download(repo_id=repo, revision=revision, local_dir=str(dst))
    return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())


def lay_out(source: dict, dst: Path, required: list[str]) -> dict:
    size = copy_tree(Path(source["pvc"]), dst) if "pvc" in source else fetch_hub(source["hub"], source["revision"], dst)
    missing = [name for name in required if not (dst / name).exists()]
    if missing:
        raise BuildError(f"{source} lacks {', '.join(missing)}")
    return {"bytes": size, "files": sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())}


def build(args: argparse.Namespace) -> int:
    manifest = plan_manifest(args)
    output = Path(args.output)
    if args.dry_run:
        print(json.dumps(manifest, indent=2))
        return 0
    if is_complete(output, args.engine_hash):
        print(f"engine {args.engine_hash} already built in {output}: nothing to do")
        return 0

    staging = output.with_name(f"{output.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest["model"].update(lay_out(manifest["model"], staging / "model", []))
        try:
            validate_model(staging / "model")
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        manifest["snac"].update(lay_out(manifest["snac"], staging / "snac", ["config.json", "pytorch_model.bin"]))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a refused build leaves no half-copied checkpoint behind
        raise
    manifest["createdAt"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["complete"] = not manifest["pending"]
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    shutil.rmtree(output, ignore_errors=True)  # an earlier, incomplete attempt
    staging.rename(output)
    if manifest["pending"]:
        print(f"error: not implemented yet: {', '.join(manifest['pending'])}; "
              f"laid out the checkpoint in {output}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    print(f"engine {args.engine_hash} built in {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
