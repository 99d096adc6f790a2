"""The engine directory: what `orpheus-tts build-engine` writes and `serve --engine` starts from.

    engine.json   the manifest: what was built from what, for which GPU, torch and settings, and
                  the model's voices (`voices`: [{"name", "language"}], orpheus_tts/voices.py)
    COMPLETE      the manifest's content hash; written last, so a directory without it (a build
                  still running, or killed halfway) is never taken for a built engine
    model/        serving weights (model/serving_weights.py) + tokenizer.json + config.json
    snac/         the SNAC 24 kHz codec (config.json + pytorch_model.bin)
    compile/      torch-cache.bin (`torch.compiler.save_cache_artifacts`: Dynamo, AOTAutograd,
                  Inductor and autotuning caches), triton/ (the builder's Triton cache: the
                  compiled kernels and their launchers, so no C compiler is needed at start) and
                  snac/ (the SNAC decoders compiled ahead of time, codec/snac_aot.py)

The builder and the server both read this module, so the format has one definition. A
mismatch between the manifest and the running server is either fatal (another format or
precision, or an incomplete directory) or a reason to compile at start-up (another torch, GPU
or compiled setting): `engine.on_mismatch` decides the latter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from orpheus_tts.config import ServerConfig, settings
from orpheus_tts.engine.cuda_graphs import PrefillGraphs, batch_buckets, codec_batch_buckets
from orpheus_tts.voices import ENGLISH, Voice, from_records

log = logging.getLogger("orpheus_tts.engine")

FORMAT_VERSION = 1
MANIFEST = "engine.json"
COMPLETE = "COMPLETE"
MODEL_DIR = "model"
SNAC_DIR = "snac"
TORCH_CACHE = "compile/torch-cache.bin"
TRITON_DIR = "compile/triton"
INDUCTOR_TRITON_DIR = "compile/inductor-triton"
SNAC_AOT_DIR = "compile/snac"
COMPILE_PENDING = "compile"

# The settings the compiled artifacts and captured graphs depend on (shapes, dtypes, buckets).
COMPILED_KEYS = (
    "scheduler.max_concurrent_sessions", "scheduler.max_batch_size", "scheduler.max_context_tokens",
    "model.dtype", "model.kv_cache_dtype", "model.compile", "model.cuda_graphs",
    "codec.dtype", "codec.compile", "codec.noise", "codec.window_frames", "codec.graph_max_batch",
    "sampling.constrained",
)
# The LoRA pool is captured inside the decode graphs: its places and their rank are compiled in
# too (0 and 0 without `adapters.dir`, when no pool is attached). The adapters themselves are not:
# they are copied into the places while serving.
LORA_PLACES, LORA_RANK = "adapters.places", "adapters.max_rank"


class EngineError(ValueError):
    """An engine directory the server cannot start from; the message names the field."""


@dataclass(frozen=True)
class Mismatch:
    field: str
    built: object
    running: object

    def __str__(self) -> str:
        return f"{self.field}: built for {self.built!r}, running {self.running!r}"


def compiled_settings(config: ServerConfig) -> dict:
    values = {s.key: s.default for s in settings(config)}
    pool = bool(config.adapters.dir)
    return {**{key: values[key] for key in COMPILED_KEYS},
            LORA_PLACES: config.adapters.max_resident if pool else 0, LORA_RANK: config.adapters.max_rank if pool else 0}


def buckets(config: ServerConfig) -> dict:
    """The batch sizes captured as graphs for these settings (what the slot budget implies)."""
    s, c = config.scheduler, config.codec
    return {"decode": batch_buckets(s.max_batch_size),
            "codec": codec_batch_buckets(s.max_concurrent_sessions, c.graph_max_batch),
            "codecWindowFrames": c.window_frames,
            "prefillBatches": list(PrefillGraphs.BATCHES), "prefillLengths": list(PrefillGraphs.LENGTHS)}


def gpu_arch(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    return "sm_{}{}".format(*torch.cuda.get_device_capability(device))


def runtime_facts(device: torch.device) -> dict:
    """What compiled code depends on besides the settings: versions and the GPU."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        ours = version("orpheus-tts")
    except PackageNotFoundError:  # run from a source tree (PYTHONPATH), not installed
        ours = "source"
    return {"orpheusTts": ours, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "gpuArch": gpu_arch(device)}


def content_hash(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, the manifest and marker excepted."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = str(path.relative_to(directory))
        if rel in (MANIFEST, COMPLETE):
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Hash the content, write engine.json, then the COMPLETE marker (last)."""
    manifest = {**manifest, "formatVersion": FORMAT_VERSION, "contentHash": content_hash(directory)}
    with (directory / MANIFEST).open("w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())  # on disk before the marker that vouches for it
    (directory / COMPLETE).write_text(manifest["contentHash"] + "\n")
    return manifest


def read_complete(directory: Path) -> dict | None:
    """The manifest of a complete engine directory, or None (absent, unfinished, inconsistent)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        marker = (directory / COMPLETE).read_text().strip()
    except (OSError, ValueError):
        return None
    return manifest if marker and marker == manifest.get("contentHash") else None


class EngineDir:
    """A built engine directory, opened by the server."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise EngineError(f"engine.path {self.path}: no such directory")
        if not (self.path / COMPLETE).exists():
            raise EngineError(f"engine.path {self.path}: no {COMPLETE} marker: the build is unfinished or was "
                              f"killed halfway; run the build again")
        manifest = read_complete(self.path)
        if manifest is None:
            raise EngineError(f"engine.path {self.path}: {MANIFEST} is unreadable or does not match {COMPLETE}")
        if manifest.get("formatVersion") != FORMAT_VERSION:
            raise EngineError(f"engine.path {self.path}: formatVersion {manifest.get('formatVersion')!r}, this "
                              f"server reads {FORMAT_VERSION}; rebuild the engine with this version")
        self.manifest = manifest

    @property
    def model_path(self) -> str:
        return str(self.path / MODEL_DIR)

    @property
    def snac_path(self) -> str:
        return str(self.path / SNAC_DIR)

    @property
    def snac_aot_path(self) -> Path:
        return self.path / SNAC_AOT_DIR

    @property
    def voices(self) -> tuple[Voice, ...]:
        """The voices the build recorded (an engine built before voices were recorded: English)."""
        recorded = self.manifest.get("voices")
        return ENGLISH if recorded is None else from_records(recorded, f"{self.path / MANIFEST} voices")

    @property
    def compiled(self) -> bool:
        return COMPILE_PENDING not in self.manifest.get("pending", [])

    def check_precision(self, quantization: str) -> None:
        """A server configured for the other precision is refused: compiling cannot fix that."""
        built = self.manifest["precision"]
        if quantization == "fp8" and built != "fp8" or quantization == "none" and built == "fp8":
            raise EngineError(f"precision: engine {self.path} was built for {built}, but model.quantization is "
                              f"{quantization}; build an engine for it or set model.quantization=auto")

    def mismatches(self, config: ServerConfig, device: torch.device) -> list[Mismatch]:
        """What differs between the compiled artifacts and this server (empty: start from them)."""
        if device.type != "cuda" or not (config.model.compile or config.model.cuda_graphs):
            return []  # nothing is compiled or captured on a CPU server
        found = []
        if not self.compiled:
            found.append(Mismatch("pending", COMPILE_PENDING, "built without a GPU: nothing compiled"))
        built_facts, running_facts = self.manifest.get("runtime", {}), runtime_facts(device)
        for key, value in running_facts.items():
            if built_facts.get(key) != value:
                found.append(Mismatch(key, built_facts.get(key), value))
        built_settings = self.manifest.get("settings", {})
        for key, value in compiled_settings(config).items():
            if built_settings.get(key) != value:
                found.append(Mismatch(key, built_settings.get(key), value))
        return found

    def load_compile_cache(self) -> dict:
        """Put the compiled artifacts where torch and Triton look, before anything compiles."""
        loaded: dict = {}
        triton_src = self.path / TRITON_DIR
        if triton_src.is_dir():
            target = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
            shutil.copytree(triton_src, target, dirs_exist_ok=True)
            loaded["tritonFiles"] = sum(1 for p in triton_src.rglob("*") if p.is_file())
        inductor_src = self.path / INDUCTOR_TRITON_DIR
        if inductor_src.is_dir():
            from torch._inductor.runtime.cache_dir_utils import cache_dir

            shutil.copytree(inductor_src, Path(cache_dir()) / "triton", dirs_exist_ok=True)
        cache = self.path / TORCH_CACHE
        if cache.is_file():
            info = torch.compiler.load_cache_artifacts(cache.read_bytes())
            loaded["torchArtifacts"] = _count_artifacts(info)
        return loaded


def _count_artifacts(info) -> dict:
    """CacheInfo lists artifacts by kind; report how many of each were loaded."""
    if info is None:
        return {}
    kinds = getattr(info, "artifacts", None) or {}
    return {str(kind): len(items) for kind, items in dict(kinds).items()}
