"""A voice's LoRA adapters (`spec.adapters`, `spec.adapterSlots`): where their files come from,
how they reach the pods, what the server is told, and what status says of them.

The server serves every subdirectory of `adapters.dir` as an adapter named after it, and looks
again every couple of seconds. Each adapter of a voice becomes one such directory,
`/var/lib/orpheus-tts/adapters/<name>`, in the server container:

- `pvc`: the claim mounted read-only with `subPath` set to the adapter's directory. A `subPath`
  mount is fixed to the directory it found at start, so files rewritten inside it reach the
  server, but a directory replaced wholesale (renamed over) does not: change an adapter by
  changing the voice (another path), which rolls the pods.
- `hub`: an emptyDir that the pod's init container `fetch-adapters` fills first, with the engine
  builder's own hub download (`engine_jobs.sources.fetch`), in the server image. The pods then
  need the hub (the builder does anyway); without it the init container stops with the
  builder's message ("could not download repo@revision: ...") and the pod waits in Init.

The adapters never enter the engine hash: adding, removing or changing one rolls the pods. The
pool the server keeps on the GPU does (`adapterSlots`: places x the rank each is sized for): it is
captured inside the decode graphs, so the engine is built for it (`pool_settings`), and it counts
in the slot budget (profiles.py). A place more than the voice has adapters could never be used
(the directory holds only these), but every place costs its share of each decode step, so the
voice gets the adapters' count rounded up to a power of two, at most `maxResident`: 1, 2, 4, 8 ...
An engine is rebuilt only when the count crosses one of those (the third adapter, the fifth ...),
not for every adapter added.

The schema fragments live here too (crd.py puts them in the CRD), beside the values that read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from .model_facts import ADAPTER_MAX_RANK, ADAPTER_MAX_RESIDENT
from .profiles import ORPHEUS_3B
from .sources import ModelSource, source_schema

ADAPTERS_MOUNT = "/var/lib/orpheus-tts/adapters"
FETCH_CONTAINER = "fetch-adapters"
# What the server takes as an adapter's name (a directory under adapters.dir; orpheus_tts.requests).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_ADAPTERS = 32

# Status states of one adapter.
PENDING, ROLLING_OUT, MOUNTED, FETCHED = "Pending", "RollingOut", "Mounted", "Fetched"

# Run by the init container: `python -c FETCH_SCRIPT ROOT NAME REPO REVISION [NAME REPO REVISION ...]`.
FETCH_SCRIPT = """\
import sys
from pathlib import Path
from engine_jobs.sources import BuildError, fetch, parse_source
root, rest = Path(sys.argv[1]), sys.argv[2:]
for name, repo, revision in zip(rest[0::3], rest[1::3], rest[2::3]):
    what = f"adapter {name}"
    try:
        fetch(parse_source(f"hub:{repo}", revision, what), root / name, what)
    except BuildError as exc:
        sys.exit(str(exc))
    print(f"{what}: {repo}@{revision} fetched", flush=True)
"""
FETCH_COMMAND = ("python", "-c", FETCH_SCRIPT)
# Importing torch (engine_jobs.sources does) and one download at a time.
FETCH_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}


def adapters_schema() -> dict:
    item = source_schema(
        "A LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors), served beside "
        "the base model in the same batches; requests name it (or one of its voices).",
        hub_fetched_by="each pod's init container (fetch-adapters) into an emptyDir, so the pods need the hub",
    )
    item["required"] = ["name"]
    item["properties"] = {
        "name": {"type": "string", "pattern": NAME_PATTERN,
                 "description": "What requests name the adapter by (its directory in the pods)."},
        **item["properties"],
        "voices": {
            "type": "array",
            "maxItems": 64,
            "items": {"type": "string", "pattern": r"^[^\s:,]+$", "maxLength": 64},
            "description": "Voice names that select this adapter, for clients that only choose a voice "
            "(OpenAI's SDK); a voice maps to one adapter.",
        },
    }
    return {
        "type": "array",
        "maxItems": MAX_ADAPTERS,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "description": "Fine-tuned voices: LoRA adapters mounted (pvc) or fetched (hub) into every pod at "
        f"{ADAPTERS_MOUNT}/<name>. Changing them rolls the pods; the engine is rebuilt only when the adapter "
        "places change (their count rounded up to a power of two, at most adapterSlots.maxResident).",
    }


def adapter_slots_schema() -> dict:
    return {
        "type": "object",
        "description": "The adapter pool on each GPU (with adapters only): its memory counts in the slot budget. "
        "Default: the operator's ORPHEUS_OPERATOR_DEFAULT_ADAPTER_SLOTS (the Helm chart's "
        f"voiceDefaults.adapterSlots), else maxResident {ADAPTER_MAX_RESIDENT} and maxRank {ADAPTER_MAX_RANK}; "
        "each key the voice sets replaces the default's.",
        "properties": {
            "maxResident": {"type": "integer", "minimum": 1, "maximum": 256,
                            "description": "Adapters on the GPU at once: the voice's count rounded up to a "
                            "power of two, at most this (the engine is compiled for them); others are loaded "
                            "when a request needs them, the least recently used idle one making room."},
            "maxRank": {"type": "integer", "minimum": 1, "maximum": 1024,
                        "description": "The largest LoRA rank an adapter may have; every place is sized for it "
                        f"(Orpheus-3B: {ORPHEUS_3B.lora_place_bytes(1) / 1e6:.1f} MB per rank unit, "
                        f"{ORPHEUS_3B.lora_place_bytes(64) / 1e6:.0f} MB at 64)."},
        },
    }


def adapter_status_schema() -> dict:
    return {
        "type": "array",
        "description": "The voice's adapters and whether its pods have them.",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "source": {"type": "string", "description": "pvc:<claim>/<path> or hub:<repo>@<revision>."},
                "voices": {"type": "array", "items": {"type": "string"}},
                "state": {
                    "type": "string",
                    "enum": [PENDING, ROLLING_OUT, MOUNTED, FETCHED],
                    "description": "Pending: not in the pods' template yet (the engine builds, or the voice is "
                    "refused). RollingOut: in the template, not yet in every available pod (for long: see "
                    "the pods; a hub fetch that fails leaves them in Init with its message). Mounted (pvc) / "
                    "Fetched (hub): in every pod of a finished rollout.",
                },
            },
        },
    }


@dataclass(frozen=True)
class Adapter:
    name: str
    source: ModelSource
    voices: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraAdapters:
    """`spec.adapters` with `spec.adapterSlots` (the operator's default under it)."""

    adapters: tuple[Adapter, ...] = ()
    max_resident: int = ADAPTER_MAX_RESIDENT
    max_rank: int = ADAPTER_MAX_RANK

    @classmethod
    def from_spec(cls, adapters: list | None, slots: Mapping[str, Any] | None,
                  default_slots: Mapping[str, Any] | None = None) -> "LoraAdapters":
        merged = {**(default_slots or {}), **(slots or {})}
        return cls(
            adapters=tuple(Adapter(a["name"], ModelSource.from_spec(a), tuple(a.get("voices") or ()))
                           for a in adapters or ()),
            max_resident=merged.get("maxResident") or ADAPTER_MAX_RESIDENT,
            max_rank=merged.get("maxRank") or ADAPTER_MAX_RANK,
        )

    @property
    def places(self) -> int:
        """Places the server keeps on the GPU: 0 without adapters (no pool, no memory); else the
        count rounded up to a power of two, at most `max_resident` (see the module's docstring)."""
        if not self.adapters:
            return 0
        return min(self.max_resident, 1 << (len(self.adapters) - 1).bit_length())

    @property
    def hub(self) -> tuple[Adapter, ...]:
        return tuple(a for a in self.adapters if not a.source.is_pvc)

    def problem(self) -> str | None:
        """What the API server's list-map or a subPath would refuse, or the server would find ambiguous."""
        names = [a.name for a in self.adapters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            return f"adapters: {', '.join(twice)} named more than once"
        owner: dict[str, str] = {}
        for adapter in self.adapters:
            for voice in adapter.voices:
                if owner.setdefault(voice, adapter.name) != adapter.name:
                    return f"adapters: voice {voice!r} is mapped to both {owner[voice]} and {adapter.name}"
            path = adapter.source.pvc_path
            if path is not None and ".." in path.split("/"):
                return f"adapters: {adapter.name}'s pvc path {path!r} leaves its claim (..)"
        return None

    def pool_settings(self) -> dict[str, str]:
        """The pool the engine is compiled for, as `--set` keys (the builder's and the server's); none
        without adapters. `adapters.dir` is what switches the pool on: the Job has no adapters mounted
        there, and needs none."""
        if not self.adapters:
            return {}
        return {"adapters.dir": ADAPTERS_MOUNT, "adapters.max_resident": str(self.places),
                "adapters.max_rank": str(self.max_rank)}

    def server_settings(self) -> dict[str, str]:
        """`--set` keys of the server's `adapters` section: the pool, and the voices that select an adapter."""
        out = self.pool_settings()
        voices = [f"{voice}:{a.name}" for a in self.adapters for voice in a.voices]
        if voices:
            out["adapters.voices"] = json.dumps(voices)  # a YAML flow list
        return out

    def identities(self) -> str:
        """`{name: source}` as JSON: the pod template's annotation, read back for status."""
        return json.dumps({a.name: a.source.describe() for a in self.adapters}, sort_keys=True)

    def _claims(self) -> list[str]:
        claims: list[str] = []
        for a in self.adapters:
            if a.source.is_pvc and a.source.pvc_claim not in claims:
                claims.append(a.source.pvc_claim)  # type: ignore[arg-type]
        return claims

    def _volume_name(self, adapter: Adapter) -> str:
        if adapter.source.is_pvc:
            return f"adapter-claim-{self._claims().index(adapter.source.pvc_claim)}"  # type: ignore[arg-type]
        return f"adapter-{self.adapters.index(adapter)}"

    def volumes(self) -> list[dict]:
        claims = [{"name": f"adapter-claim-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}}
                  for i, c in enumerate(self._claims())]
        return claims + [{"name": self._volume_name(a), "emptyDir": {}} for a in self.hub]

    def volume_mounts(self) -> list[dict]:
        """The server container's: every adapter read-only at ADAPTERS_MOUNT/<name>."""
        mounts = []
        for a in self.adapters:
            mount = {"name": self._volume_name(a), "mountPath": f"{ADAPTERS_MOUNT}/{a.name}", "readOnly": True}
            if a.source.is_pvc:
                mount["subPath"] = a.source.pvc_path
            mounts.append(mount)
        return mounts

    def fetch_mounts(self) -> list[dict]:
        """The init container's: the hub adapters' emptyDirs, writable, where the server will read them."""
        return [{"name": self._volume_name(a), "mountPath": f"{ADAPTERS_MOUNT}/{a.name}"} for a in self.hub]

    def fetch_args(self) -> list[str]:
        args = [ADAPTERS_MOUNT]
        for a in self.hub:
            args += [a.name, str(a.source.hub_repo), str(a.source.revision)]
        return args

    def status(self, live_identities: str | None, rolled_out: bool) -> list[dict] | None:
        """`status.adapters`: `live_identities` is the annotation of the Deployment's pod template
        (None: no Deployment), `rolled_out` whether every pod runs that template and one is available."""
        if not self.adapters:
            return None  # clears an older list
        live = json.loads(live_identities) if live_identities else {}
        out = []
        for a in self.adapters:
            source = a.source.describe()
            if live.get(a.name) != source:
                state = PENDING
            elif not rolled_out:
                state = ROLLING_OUT
            else:
                state = MOUNTED if a.source.is_pvc else FETCHED
            out.append({"name": a.name, "source": source, "voices": list(a.voices), "state": state})
        return out
