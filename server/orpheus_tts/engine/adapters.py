"""Which LoRA adapters exist, which are resident in the pool, and which sessions use them.

Adapters are the subdirectories of `adapters.dir` (PEFT's `adapter_config.json` +
`adapter_model.safetensors`), named by their directory; the directory is scanned again at most
every `scan_interval_s`, so an adapter copied in (or a Secret / PVC updated) is registered, and
one removed unregistered, without a restart. A request names an adapter; at admission its
session takes the adapter's place in the pool, loading it first if it is not resident: the read
from disk runs on a worker thread (the engine keeps stepping; the session waits in the queue),
then the copy into the pool runs on the engine thread between two steps. When every place is
taken, the least recently used one that no session holds is given to the new adapter; an evicted
adapter's next request loads it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from orpheus_tts.config import AdaptersConfig
from orpheus_tts.errors import RequestError
from orpheus_tts.model.lora import CONFIG_FILE, WEIGHTS_FILE, AdapterError, LoraAdapter, LoraPool, load_adapter
from orpheus_tts.model.llama import ModelArgs

log = logging.getLogger("orpheus_tts.engine")


class AdapterRegistry:
    def __init__(self, directory: str, pool: LoraPool, args: ModelArgs, scan_interval_s: float = 2.0):
        self.directory = Path(directory)
        self.pool, self.args, self.scan_interval_s = pool, args, scan_interval_s
        self._known: dict[str, Path] = {}
        self._versions: dict[str, tuple] = {}  # name -> its files' (mtime, size): a changed adapter reloads
        self._scanned_at = float("-inf")
        self._lock = threading.Lock()  # `known` and `check` run on request threads
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> place, least recently used first
        self._resident_version: dict[str, tuple] = {}
        self._users: dict[int, int] = {}  # place -> sessions holding it
        self._loading: dict[str, Future] = {}
        self._failed: dict[str, str] = {}  # name -> why its last load failed (until the next scan)
        self._not_adapters: set[str] = set()  # subdirectories without an adapter, warned about once
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orpheus-adapter-load")
        self.loads = 0
        self.evictions = 0

    @classmethod
    def attach(cls, config: AdaptersConfig, model) -> "AdapterRegistry":
        """The adapters of `config.dir` for `model`: a pool on its device, attached to every layer
        (before its graphs are captured, so they capture the adapters' part too)."""
        weight = model.output.weight
        pool = LoraPool(model.args, config.max_resident, config.max_rank, weight.device, weight.dtype)
        model.attach_lora(pool)
        log.info("LoRA: %d adapter places of rank %d (%.0f MB) for the adapters in %s", config.max_resident,
                 config.max_rank, pool.nbytes / 2**20, config.dir)
        return cls(config.dir, pool, model.args, config.scan_interval_s)

    # -- any thread --------------------------------------------------------------------
    def known(self) -> dict[str, Path]:
        """The adapters in the directory now (scanned at most every `scan_interval_s`)."""
        with self._lock:
            now = time.monotonic()
            if now - self._scanned_at >= self.scan_interval_s:
                self._scanned_at = now
                entries = sorted(p for p in self.directory.iterdir() if p.is_dir()) if self.directory.is_dir() else []
                found = {p.name: p for p in entries if (p / CONFIG_FILE).is_file()}
                for p in entries:  # other files (a README, a download's .cache/) are left alone
                    if p.name not in found and not p.name.startswith(".") and p.name not in self._not_adapters:
                        self._not_adapters.add(p.name)
                        log.warning("adapters.dir: %s has no %s; it is not served as an adapter", p.name, CONFIG_FILE)
                versions = {name: _version(path) for name, path in found.items()}
                for name in set(self._known) ^ set(found):
                    log.info("adapter %s %s", name, "registered" if name in found else "unregistered")
                self._known, self._versions = found, versions
                self._failed.clear()
            return dict(self._known)

    def check(self, name: str) -> None:
        """Refuse a request for an adapter that does not exist, naming those that do."""
        known = self.known()
        if name not in known:
            shown = ", ".join(sorted(known)[:20]) or "none"
            raise RequestError("adapter", f"unknown adapter {name!r}; this server has {shown}")

    def for_model(self, model) -> str | None:
        """OpenAI's `model` field: the adapter it names, if there is one of that name (any other
        value, `tts-1` or a checkpoint's id, is the base model)."""
        return model if isinstance(model, str) and model in self.known() else None

    # -- engine thread -----------------------------------------------------------------
    def acquire(self, name: str) -> int | None:
        """The pool place of `name` for one more session, or None while it cannot have one yet
        (loading from disk, or every place held by running sessions). Raises AdapterError when
        the adapter cannot be served (unregistered, or its files are bad)."""
        self.known()
        if name in self._resident and self._resident_version[name] != self._versions.get(name):
            place = self._resident[name]  # changed on disk (or removed): load it again once no session holds it
            if not self._users.get(place):
                del self._resident[name], self._resident_version[name]
        if name in self._resident:
            place = self._resident[name]
            self._resident.move_to_end(name)
            self._users[place] = self._users.get(place, 0) + 1
            return place
        if name in self._failed:
            raise AdapterError(self._failed[name])
        future = self._loading.get(name)
        if future is None:
            path = self.known().get(name)
            if path is None:
                raise AdapterError(f"adapter {name!r} was unregistered (removed from adapters.dir)")
            self._loading[name] = self._reader.submit(_load, path, name, self.args, self.pool.max_rank)
            return None
        if not future.done():
            return None
        if future.exception() is not None:  # before a place is freed for it: a bad adapter evicts nothing
            del self._loading[name]
            self._failed[name] = str(future.exception())
            raise AdapterError(self._failed[name])
        place = self._free_place()
        if place is None:
            return None  # every place is held: wait for a session to end
        del self._loading[name]
        adapter, version = future.result()
        self.pool.put(place, adapter)
        self._resident[name], self._resident_version[name] = place, version
        self.loads += 1
        log.info("adapter %s loaded into place %d (%.1f MB)", name, place, adapter.nbytes / 2**20)
        return self.acquire(name)

    def release(self, place: int) -> None:
        """A session that held `place` ended."""
        self._users[place] -= 1

    def _free_place(self) -> int | None:
        used = set(self._resident.values())
        for place in range(self.pool.capacity):
            if place not in used:
                return place
        for name, place in self._resident.items():  # least recently used first
            if not self._users.get(place):
                del self._resident[name], self._resident_version[name]
                self.evictions += 1
                log.info("adapter %s evicted from place %d", name, place)
                return place
        return None

    @property
    def resident(self) -> dict[str, int]:
        return dict(self._resident)

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)


def _version(path: Path) -> tuple:
    """What says an adapter's files changed: their modification times and sizes."""
    try:
        return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in (path / CONFIG_FILE, path / WEIGHTS_FILE))
    except OSError:
        return ()


def _load(path: Path, name: str, args: ModelArgs, max_rank: int) -> tuple[LoraAdapter, tuple]:
    version = _version(path)  # before the read: a change during it is seen at the next acquire
    return load_adapter(path, name, args, max_rank), version
