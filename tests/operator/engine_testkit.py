"""Test kit for running what the operator asks Kubernetes to run, as real subprocesses: the
build Job's container and a serving pod's container.

`LocalKubelet` plays the kubelet: it maps a pod's volumes to local directories, rewrites its
container's mount paths to them and runs the container's command and args. The checkpoints a
voice's PVC holds come from `tests/server/checkpoint_testkit.py`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from operator_testkit import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalKubelet:
    """Runs a pod's container here, the way a kubelet would mount its volumes.

    `claims` maps PersistentVolumeClaim names to local directories (what the claims' volumes
    hold); each emptyDir gets a fresh directory under `scratch`. A volume (or its `subPath`) is
    mounted at the container's `mountPath`; here that means rewriting the mount paths in the
    container's args and environment to the local directories. `python` and the image's
    `orpheus-tts` script become this interpreter. Not enforced: readOnly, resources, security.
    """

    def __init__(self, claims: dict[str, Path], scratch: Path):
        self.claims = claims
        self.scratch = scratch

    def mounts(self, pod: dict, container: dict) -> dict[str, Path]:
        """mountPath -> local directory, longest path first (so /cache/x wins over /cache)."""
        volumes = {}
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                volumes[volume["name"]] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            else:
                volumes[volume["name"]] = self.scratch / container["name"] / volume["name"]
                volumes[volume["name"]].mkdir(parents=True, exist_ok=True)
        out = {m["mountPath"]: volumes[m["name"]] / m.get("subPath", "") for m in container.get("volumeMounts", [])}
        return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))

    @staticmethod
    def localize(value: str, mounts: dict[str, Path]) -> str:
        prefix = "pvc:" if value.startswith("pvc:/") else ""  # the builder's pvc: source arguments
        path = value[len(prefix):]
        for mount_path, local in mounts.items():
            if path == mount_path or path.startswith(mount_path + "/"):
                return prefix + str(local) + path[len(mount_path):]
        return value

    def argv(self, pod: dict, container: dict) -> list[str]:
        mounts = self.mounts(pod, container)
        command = container["command"]
        if command[0] == "python":
            command = [sys.executable, *command[1:]]
        elif command == ["orpheus-tts"]:
            command = [sys.executable, "-m", "orpheus_tts.cli"]
        return [*command, *(self.localize(a, mounts) for a in container.get("args", []))]

    def env(self, pod: dict, container: dict) -> dict[str, str]:
        mounts = self.mounts(pod, container)
        env = {e["name"]: self.localize(e["value"], mounts) for e in container.get("env", [])}
        return {**os.environ, **env, "PYTHONUNBUFFERED": "1"}

    def run(self, pod: dict, timeout: float) -> subprocess.CompletedProcess:
        """Run the pod's only container to completion (a Job's pod)."""
        (container,) = pod["containers"]
        return subprocess.run(self.argv(pod, container), env=self.env(pod, container), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, pod: dict, argv: list[str], log: Path) -> subprocess.Popen:
        """Start the pod's only container with `argv` (its argv, adjusted by the caller)."""
        (container,) = pod["containers"]
        with log.open("w") as out:
            return subprocess.Popen(argv, env=self.env(pod, container), cwd=REPO_ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
