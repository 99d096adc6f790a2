"""Who may call, and how much: API keys and per-key limits, the same for every door.

Each door asks `AccessControl.admit` once per request, with the key the caller sent (the gRPC
interceptor in `grpc_access.py`, the ASGI middleware in `http/access.py`); it answers a `Permit`
(the key's name, and for a speech stream its session slot, released however the stream ends)
or raises `UnauthenticatedError`, `KeyRateError` or `KeySessionsError`.

Keys come from `security.api_keys_file` and the environment variable ORPHEUS_TTS_API_KEYS
(read at start-up). A key is compared with `hmac.compare_digest` against every known key, never
stopping at the first match, so the time taken says nothing about which keys exist. Metrics and
logs show a key's name, never the key.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Mapping

from orpheus_tts.config import API_KEYS_ENV, ConfigError, SecurityConfig
from orpheus_tts.errors import KeyRateError, KeySessionsError, UnauthenticatedError
from orpheus_tts.metrics import ServerMetrics

log = logging.getLogger("orpheus_tts.access")

KEY_FILE_POLL_S = 1.0  # the keys file is looked at (one stat) at most this often, on a request
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # names become metric labels: short and plain
NO_KEY = "-"  # the key name logged while keys are off

# The calling key's name, for the request's log line (set by the door, read by its RequestRecord).
current_key: contextvars.ContextVar[str] = contextvars.ContextVar("orpheus_tts_api_key", default=NO_KEY)


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: bytes
    digest: bytes = field(init=False, repr=False)  # what a presented token's digest is compared with

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.secret).digest())

    def __repr__(self) -> str:  # never the secret, even in a traceback
        return f"ApiKey({self.name!r})"


def parse_keys(lines: list[str], where: str) -> list[ApiKey]:
    """`name:key` (or a bare `key`, named `key-N` after its position) per entry; `#` comments and
    blank entries skipped; a bad entry is skipped with a warning that names its position only."""
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        name, secret = (name.strip(), secret.strip()) if sep else (f"key-{number}", name)
        if not secret or not NAME_PATTERN.fullmatch(name):
            log.warning("%s, entry %d: not `name:key` with a name of letters, digits and _.@- (at most 64): "
                        "skipped", where, number)
            continue
        keys.append(ApiKey(name, secret.encode()))
    return keys


def file_signature(path: str) -> tuple | None:
    """What changes when the file does, symlinks followed (a Kubernetes Secret swaps its `..data`
    link to a new directory: a new inode); None when it cannot be read. The TLS files use it too."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class KeyRing:
    """The known keys: the environment's, read once, and the file's, read again when it changes."""

    def __init__(self, path: str, env_keys: list[ApiKey]):
        self.path = path
        self._env_keys = env_keys
        self._file_keys: list[ApiKey] = []
        self._signature: tuple | None = None
        self._looked = 0.0
        if path and not self._reload() and not env_keys:
            raise ConfigError(f"security.api_keys_file {path}: no keys could be read from it, and {API_KEYS_ENV} "
                              f"holds none (a server that wants keys would refuse every request)")
        self.keys = self._env_keys + self._file_keys

    @classmethod
    def from_config(cls, config: SecurityConfig, environ: Mapping[str, str]) -> "KeyRing":
        return cls(config.api_keys_file, parse_keys(environ.get(API_KEYS_ENV, "").split(","), API_KEYS_ENV))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def names(self) -> list[str]:
        return sorted({key.name for key in self.keys})

    def lookup(self, token: str | None) -> str | None:
        """The name of the key `token` is, or None. Every key is compared, in constant time each,
        as SHA-256 digests: equal lengths, so the time says nothing of a key's length either."""
        self._refresh()
        sent = hashlib.sha256((token or "").encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, sent) and found is None:
                found = key.name
        return found

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._looked < KEY_FILE_POLL_S:
            return
        self._looked = now
        if file_signature(self.path) != self._signature:
            self._reload()
            self.keys = self._env_keys + self._file_keys

    def _reload(self) -> bool:
        """Read the file; keep the last good keys when it cannot be read or holds none."""
        self._signature = file_signature(self.path)
        try:
            with open(self.path, encoding="utf-8") as f:
                keys = parse_keys(f.read().splitlines(), self.path)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("API keys file %s cannot be read (%s): keeping the %d keys read before", self.path,
                        type(exc).__name__, len(self._file_keys))
            return False
        if not keys:
            log.warning("API keys file %s holds no keys: keeping the %d keys read before", self.path,
                        len(self._file_keys))
            return False
        if self._file_keys:
            log.info("API keys file %s read again: %d keys", self.path, len(keys))
        self._file_keys = keys
        return True


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; a request takes one."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Permit:
    """One admitted request: the key's name and, for a speech stream, its session slot (freed by
    `release`, once, however the stream ends)."""

    def __init__(self, name: str, sessions: dict[str, int] | None = None):
        self.name = name
        self._sessions = sessions  # the counts a slot was taken from; None when none was

    def release(self) -> None:
        if self._sessions is not None:
            self._sessions[self.name] -= 1
            self._sessions = None

    def __enter__(self) -> "Permit":
        current_key.set(self.name)  # each request runs in a task of its own, so it is never reset
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class AccessControl:
    """Keys and their limits. Runs on the event loop only (both doors do), so no locks."""

    def __init__(self, config: SecurityConfig, metrics: ServerMetrics, environ: Mapping[str, str] | None = None):
        self.config = config
        self.metrics = metrics
        self.keys = KeyRing.from_config(config, os.environ if environ is None else environ)
        self._buckets: dict[str, TokenBucket] = {}
        self._sessions: dict[str, int] = {}
        self._burst = config.burst_per_key or max(1, math.ceil(config.requests_per_s_per_key))
        if self.enabled:
            log.info("API keys on: %d keys (%s)", len(self.keys.keys), ", ".join(self.keys.names()))
            metrics.key_limits_on(bool(config.requests_per_s_per_key), bool(config.max_sessions_per_key))

    @property
    def enabled(self) -> bool:
        return self.keys.enabled

    def is_open(self, probe: bool) -> bool:
        """Whether a request needs no key: keys are off, or it is a probe and probes are open."""
        return not self.enabled or (probe and self.config.open_probes)

    def admit(self, token: str | None, protocol: str, stream: bool = False) -> Permit:
        """Admit a request that sent `token` (None: no key), or raise why not."""
        if not self.enabled:
            return Permit(NO_KEY)
        name = self.keys.lookup(token)
        if name is None:
            self.metrics.unauthenticated_request(protocol)
            raise UnauthenticatedError()
        rate = self.config.requests_per_s_per_key
        if rate:
            bucket = self._buckets.get(name) or self._buckets.setdefault(name, TokenBucket(rate, self._burst))
            wait_s = bucket.take()
            if wait_s:
                self.metrics.key_request(name, KeyRateError.code)
                raise KeyRateError(name, rate, max(1, math.ceil(wait_s)))
        limit = self.config.max_sessions_per_key
        if stream and limit:
            if self._sessions.get(name, 0) >= limit:
                self.metrics.key_request(name, KeySessionsError.code)
                raise KeySessionsError(name, limit)
            self._sessions[name] = self._sessions.get(name, 0) + 1
            self.metrics.key_request(name, "accepted")
            return Permit(name, self._sessions)
        self.metrics.key_request(name, "accepted")
        return Permit(name)

    def open_sessions(self, name: str) -> int:
        """Speech streams `name` holds now (tests and GetStats-like views)."""
        return self._sessions.get(name, 0)


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header (the scheme in any case), else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None
