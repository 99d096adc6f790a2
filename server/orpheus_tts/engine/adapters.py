"""Which LoRA adapters exist, which are resident in the pool, and which sessions use them.

Adapters are the subdirectories of `adapters.dir` (PEFT's `adapter_config.json` +
`adapter_model.safetensors`), named by their directory; a thread of its own scans the directory
every `scan_interval_s`, so an adapter copied in (or a Secret / PVC updated) is registered, and
one removed unregistered, without a restart, and a slow volume never stalls a request or a step.
An adapter changed on disk is loaded again into another place; sessions on the old version keep
theirs until they end. A request names an adapter; at admission its
session takes the adapter's place in the pool, loading it first if it is not resident: the read
from disk runs on a worker thread (the engine keeps stepping; the session waits in the queue),
then the copy into the pool runs on the engine thread between two steps. When every place is
taken, the least recently used one that no session holds is given to the new adapter; an evicted
adapter's next request loads it again.
"""

from __future__ import annotations

import logging
import threading
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
        self._lock = threading.Lock()  # the scan's results: written by the scanner, read by every thread
        self._known: dict[str, Path] = {}
        self._versions: dict[str, tuple] = {}  # name -> its files' (mtime, size): a changed adapter reloads
        self._failed: dict[str, str] = {}  # name -> why its last load failed (until the next scan)
        self._not_adapters: set[str] = set()  # subdirectories without an adapter, warned about once
        # The engine thread's alone:
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> place, least recently used first
        self._resident_version: dict[str, tuple] = {}
        self._retiring: dict[int, str] = {}  # place -> the old version still held by sessions
        self._users: dict[int, int] = {}  # place -> sessions holding it
        self._loading: dict[str, Future] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orpheus-adapter-load")
        self.loads = 0
        self.evictions = 0
        self.rescan()
        self._stop = threading.Event()
        self._scanner = threading.Thread(target=self._scan_loop, name="orpheus-adapter-scan", daemon=True)
        self._scanner.start()

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

    # -- the scanner thread (and `rescan`, any thread) -----------------------------------
    def _scan_loop(self) -> None:
        """Scan on a thread of its own: a slow volume (NFS, a PVC) never stalls a request or a step."""
        while not self._stop.wait(self.scan_interval_s):
            self.rescan()

    def rescan(self) -> None:
        """Look at the directory now: adapters added, removed or changed."""
        found: dict[str, Path] = {}
        others = []
        try:
            entries = sorted(self.directory.iterdir()) if self.directory.is_dir() else []
        except OSError as exc:
            log.warning("adapters.dir %s cannot be read (%s); keeping the adapters known before", self.directory, exc)
            return
        for entry in entries:
            try:  # one unreadable entry (lost+found on a volume's root) hides no other
                if not entry.is_dir():
                    continue
                if (entry / CONFIG_FILE).is_file():
                    found[entry.name] = entry
                else:
                    others.append(entry)
            except OSError:
                others.append(entry)
        versions = {name: _version(path) for name, path in found.items()}
        with self._lock:
            for entry in others:  # other files (a README, a download's .cache/) are left alone
                if not entry.name.startswith(".") and entry.name not in self._not_adapters:
                    self._not_adapters.add(entry.name)
                    log.warning("adapters.dir: %s has no readable %s; it is not served as an adapter", entry.name,
                                CONFIG_FILE)
            for name in set(self._known) ^ set(found):
                log.info("adapter %s %s", name, "registered" if name in found else "unregistered")
            self._known, self._versions = found, versions
            self._failed.clear()

    # -- any thread --------------------------------------------------------------------
    def known(self) -> dict[str, Path]:
        """The adapters in the directory at the last scan (every `scan_interval_s`)."""
        with self._lock:
            return dict(self._known)

    def has(self, name) -> bool:
        with self._lock:
            return name in self._known

    def check(self, name: str) -> None:
        """Refuse a request for an adapter that does not exist, naming those that do."""
        if not self.has(name):
            shown = ", ".join(sorted(self.known())[:20]) or "none"
            raise RequestError("adapter", f"unknown adapter {name!r}; this server has {shown}")

    def for_model(self, model) -> str | None:
        """OpenAI's `model` field: the adapter it names, if there is one of that name (any other
        value, `tts-1` or a checkpoint's id, is the base model)."""
        return model if isinstance(model, str) and self.has(model) else None

    # -- engine thread -----------------------------------------------------------------
    def acquire(self, name: str) -> int | None:
        """The pool place of `name` for one more session, or None while it cannot have one yet
        (loading from disk, or every place held by running sessions). Raises AdapterError when
        the adapter cannot be served (unregistered, or its files are bad)."""
        with self._lock:
            path, version, failed = self._known.get(name), self._versions.get(name), self._failed.get(name)
        if name in self._resident and self._resident_version[name] != version:
            # Changed on disk (or removed): new sessions get the new version; those on the old
            # one keep its place until they end.
            place = self._resident.pop(name)
            del self._resident_version[name]
            if self._users.get(place):
                self._retiring[place] = name
        if name in self._resident:
            place = self._resident[name]
            self._resident.move_to_end(name)
            self._users[place] = self._users.get(place, 0) + 1
            return place
        if failed is not None:
            raise AdapterError(failed)
        future = self._loading.get(name)
        if future is None:
            if path is None:
                raise AdapterError(f"adapter {name!r} was unregistered (removed from adapters.dir)")
            self._loading[name] = self._reader.submit(_load, path, name, self.args, self.pool.max_rank)
            return None
        if not future.done():
            return None
        if future.exception() is not None:  # before a place is freed for it: a bad adapter evicts nothing
            del self._loading[name]
            message = str(future.exception())
            with self._lock:
                self._failed[name] = message
            raise AdapterError(message)
        place = self._free_place()
        if place is None:
            return None  # every place is held: wait for a session to end
        del self._loading[name]
        adapter, loaded_version = future.result()
        self.pool.put(place, adapter)
        self._resident[name], self._resident_version[name] = place, loaded_version
        self.loads += 1
        log.info("adapter %s loaded into place %d (%.1f MB)", name, place, adapter.nbytes / 2**20)
        return self.acquire(name)

    def place_for(self, session) -> int | None:
        """Admission's question for a session on an adapter (`Scheduler.admit`): its place, or None
        while it must wait; one waiting for the adapter's read from disk is marked so the queue's
        bound does not refuse it as at capacity."""
        place = self.acquire(session.request.adapter)
        session.adapter_loading = place is None and session.request.adapter in self._loading
        return place

    def release(self, place: int) -> None:
        """A session that held `place` ended."""
        self._users[place] -= 1
        if not self._users[place] and place in self._retiring:
            del self._retiring[place]  # the old version's last session: the place is free

    def _free_place(self) -> int | None:
        used = set(self._resident.values()) | set(self._retiring)
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
        self._stop.set()
        self._reader.shutdown(wait=False, cancel_futures=True)


def check_adapter(registry: AdapterRegistry | None, name: str) -> None:
    """A request's adapter must be one this server has (RequestError naming the field otherwise)."""
    if registry is None:
        raise RequestError("adapter", "this server serves no adapters (adapters.dir is not set)")
    registry.check(name)


def _version(path: Path) -> tuple:
    """What says an adapter's files changed: their modification times and sizes."""
    try:
        return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in (path / CONFIG_FILE, path / WEIGHTS_FILE))
    except OSError:
        return ()


def _load(path: Path, name: str, args: ModelArgs, max_rank: int) -> tuple[LoraAdapter, tuple]:
    version = _version(path)  # before the read: a change during it is seen at the next acquire
    return load_adapter(path, name, args, max_rank), version
