"""Where a build's checkpoint comes from, and putting it where the build reads it.

    pvc:/sources/source-0/orpheus-3b     a directory on a mounted claim (read in place)
    hub:canopylabs/orpheus-3b-0.1-ft     a Hugging Face repository at --revision (needs a network)
    demo                                 the built-in tiny demo weights (no GPU, no download)
    random:orpheus-3b                    random weights of a named shape (benchmarks without weights)
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from orpheus_tts.codec.snac_codec import DEMO_DECODER_DIM, SNAC_24KHZ
from orpheus_tts.model.llama import NAMED_CONFIGS
from orpheus_tts.model.loader import RANDOM_PREFIX


class BuildError(Exception):
    """Something the person building must fix; the message says what."""


@dataclass(frozen=True)
class Source:
    kind: str  # pvc | hub | demo | random
    location: str = ""  # the path, repository or named shape
    revision: str | None = None

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "revision": self.revision}


def parse_source(value: str, revision: str | None, what: str) -> Source:
    if value == "demo":
        return Source("demo")
    if value == "random" and what == "--snac-source":  # the real SNAC architecture, random weights
        return Source("random", "snac_24khz")
    if value.startswith(RANDOM_PREFIX):
        name = value[len(RANDOM_PREFIX):]
        if what == "--model-source" and name not in NAMED_CONFIGS:
            raise BuildError(f"{what}: no named shape {name!r}; known: {sorted(NAMED_CONFIGS)}")
        return Source("random", name)
    kind, sep, rest = value.partition(":")
    if not sep or not rest or kind not in ("hub", "pvc"):
        raise BuildError(f"{what} must be pvc:PATH, hub:REPO, demo or random:NAME, got {value!r}")
    if kind == "hub":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+", rest):
            raise BuildError(f"{what}: {rest!r} is not a hub repository id (owner/name)")
        if not revision:
            raise BuildError(f"{what} {rest} needs a revision (a commit hash is best)")
        return Source("hub", rest, revision)
    if not rest.startswith("/"):
        raise BuildError(f"{what}: PVC path {rest!r} must be absolute (where the claim is mounted)")
    return Source("pvc", rest)


def fetch(source: Source, download_dir: Path, what: str) -> Path:
    """A local directory holding the source's files (pvc: in place; hub: downloaded)."""
    if source.kind == "pvc":
        path = Path(source.location)
        if not path.is_dir():
            raise BuildError(f"{what}: {path} is not a directory (is the claim mounted and the path right?)")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BuildError(f"{what}: hub sources need huggingface_hub, which is not installed; "
                         f"use a pvc: source") from None
    try:
        snapshot_download(repo_id=source.location, revision=source.revision, local_dir=str(download_dir))
    except Exception as exc:  # noqa: BLE001 (offline, unknown repo or revision, no access: all the caller's to fix)
        raise BuildError(f"{what}: could not download {source.location}@{source.revision}: {exc}") from None
    return download_dir


def model_path(source: Source, local: Path | None) -> str:
    """What the server's loader takes: `demo`, `random:<shape>`, or a checkpoint directory."""
    if source.kind == "demo":
        return "demo"
    if source.kind == "random":
        return RANDOM_PREFIX + source.location
    return str(local)


def write_snac(source: Source, local: Path | None, target: Path, seed: int) -> None:
    """The codec in its on-disk format (config.json + pytorch_model.bin) in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    if local is not None:
        for name in ("config.json", "pytorch_model.bin"):
            shutil.copy2(local / name, target / name)
        return
    from snac import SNAC

    config = {**SNAC_24KHZ, "decoder_dim": DEMO_DECODER_DIM if source.kind == "demo" else 1024}
    with torch.random.fork_rng(devices=[]):  # the same weights SnacCodec.load("demo"/"random") makes
        torch.manual_seed(seed)
        model = SNAC(**config)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(model.state_dict(), target / "pytorch_model.bin")
