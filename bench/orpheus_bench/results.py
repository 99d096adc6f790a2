"""What every bench writes with its numbers, so two runs can be compared: which device, torch
and commit produced them, with which command line.

The commit comes from `GIT_COMMIT` where it is set (a GPU machine may run a copy of the tree
with no `.git`), else from git itself.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def log(*parts) -> None:
    print(*parts, flush=True)


def git_commit() -> str | None:
    """The commit of the checkout this package runs from; None when that cannot be told."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reruns this bench (`python -m MODULE ARGS`), with no path of this machine."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def header(device, command: str) -> dict:
    """The fields that open every bench's JSON."""
    import torch

    return dict(device=device_name(device), torch=torch.__version__, git_commit=git_commit() or "unknown",
                command=command, python=platform.python_version())


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
