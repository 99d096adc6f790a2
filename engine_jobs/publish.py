"""Publishing an engine directory: built in a staging directory, renamed into place.

Two builds of one hash (two Jobs, or a Job and a person) take a lock beside the output; the
second finds the first's engine complete and does nothing. A build killed halfway leaves only
a `.partial-*` staging directory, never a COMPLETE marker; the next build removes it.
"""

from __future__ import annotations

import errno
import fcntl
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# errno values that mean "this output cannot be written" (exit 4), not a bad input.
UNWRITABLE = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full",
              errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}


class OutputError(Exception):
    """The output path cannot be written; the message says why."""


def unwritable(exc: OSError, output: Path) -> OutputError | None:
    reason = UNWRITABLE.get(exc.errno or 0)
    return OutputError(f"cannot write {output}: {reason} ({exc.strerror})") if reason else None


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive lock on `<output>.lock`, held across the whole build (blocks until free)."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        lock = open(output.with_name(output.name + ".lock"), "a+")
    except OSError as exc:
        raise unwritable(exc, output) or exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fresh_staging(output: Path, pid: int) -> Path:
    """Remove staging directories that killed builds left (the caller holds the lock), make ours."""
    for stale in output.parent.glob(f"{output.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = output.with_name(f"{output.name}.partial-{pid}")
    staging.mkdir()
    return staging


def publish(staging: Path, output: Path) -> None:
    """Rename the finished staging directory into place (replacing an incomplete one)."""
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
