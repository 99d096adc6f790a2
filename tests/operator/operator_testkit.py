"""Test kit for the operator tests: the mock Kubernetes API (kmock) and the real operator process.

kmock's `KubernetesEmulator` keeps objects in memory and serves create, get, list, watch, patch
and delete over HTTP on a loopback port. It is not a real API server: no defaulting, no
garbage collection, no controllers (a Job never runs, a Deployment never gets pods), and a
patch of any kind is a recursive dict merge. The tests play the controllers' part by patching
the status of Jobs and Deployments themselves.

kmock also never changes `metadata.resourceVersion`, which kopf uses to tell the echo of its
own patches from newer changes; so kopf here sometimes handles one event twice. The operator's
handlers are idempotent, so that changes nothing but the log (a real API server bumps it).
Bumping it in the mock breaks kopf's JSON-patch `test` operations instead (kmock answers a
failed test with 500, not 422), so the tests live with the repeats.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from orpheus_operator.crd import GROUP, KIND, PLURAL, VERSION
from orpheus_operator.hashing import engine_hash
from orpheus_operator.labels import engine_job_name
from orpheus_operator.voice import Voice

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
NAMESPACE = "voices"
VOICES = f"{GROUP}/{VERSION}/{PLURAL}"
JOBS = "batch/v1/jobs"
DEPLOYMENTS = "apps/v1/deployments"

VERBS = {"create", "get", "list", "watch", "patch", "update", "delete"}

# (group/version/plural, kind) of everything the operator reads or writes.
RESOURCES = [
    (f"{GROUP}/{VERSION}/{PLURAL}", KIND, {"status", "scale"}),
    ("batch/v1/jobs", "Job", {"status"}),
    ("apps/v1/deployments", "Deployment", {"status", "scale"}),
    ("v1/services", "Service", {"status"}),
    ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler", {"status"}),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", {"status"}),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", set()),
    ("v1/events", "Event", set()),
    ("events.k8s.io/v1/events", "Event", set()),
    ("v1/namespaces", "Namespace", set()),
]


def load_example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def voice_body(example: str = "voice-rtx4090-conversational.yaml", **spec) -> dict:
    """An example voice as the API would return it (namespace `voices`, a uid), with `spec` changed."""
    body = load_example(example)
    body["metadata"].update(namespace="voices", uid="5f0c0d9e-0000-4000-8000-000000000002")
    body["spec"].update(spec)
    return body


def job_name_for(body: dict) -> str:
    """The build Job the operator makes for this voice once it is created in NAMESPACE."""
    body = {**body, "metadata": {**body["metadata"], "namespace": NAMESPACE}}
    return engine_job_name(engine_hash(Voice.from_body(body)))


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.1)


class MockCluster:
    """kmock plus helpers that read its objects and play the Job and Deployment controllers."""

    def __init__(self, kmock: Any, kubeconfig: Path):
        self.kmock = kmock
        self.kubeconfig = kubeconfig

    def objects(self, resource: str, namespace: str = NAMESPACE) -> dict[str, dict]:
        """Live (not deleted) objects of one resource, by name."""
        out = {}
        for (res, ns, name), obj in self.kmock.objects.items():
            if res == self.kmock.resource(resource) and ns == namespace and not obj.deleted:
                out[name] = dict(obj.raw)
        return out

    def get(self, resource: str, name: str, namespace: str = NAMESPACE) -> dict | None:
        return self.objects(resource, namespace).get(name)

    def creates(self, resource: str) -> int:
        """How many POSTs (creations, failed or not) the resource has received."""
        wanted = self.kmock.resource(resource)
        return sum(1 for r in self.kmock if r.method == self.kmock.method.POST and r.resource == wanted)

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        resp = await self.kmock.request(method, path, json=body, headers=headers)
        assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()

    async def create_voice(self, body: dict, uid: str) -> dict:
        body = {**body, "metadata": {**body["metadata"], "namespace": NAMESPACE, "uid": uid, "generation": 1, "resourceVersion": "1"}}
        return await self.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", body)

    async def patch_voice(self, name: str, patch: dict) -> dict:
        return await self.request("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}", patch)

    async def complete_job(self, name: str) -> None:
        status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        await self.request("PATCH", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}/status", {"status": status})

    async def fail_job(self, name: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        cond = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit", "lastTransitionTime": now}
        await self.request("PATCH", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}/status", {"status": {"failed": 3, "conditions": [cond]}})

    async def make_pods_available(self, deployment: str, count: int = 1) -> None:
        status = {"replicas": count, "readyReplicas": count, "availableReplicas": count, "updatedReplicas": count}
        await self.request("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{deployment}/status", {"status": status})

    def condition(self, voice: str, type_: str) -> dict | None:
        obj = self.get(f"{GROUP}/{VERSION}/{PLURAL}", voice) or {}
        for cond in obj.get("status", {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None


class OperatorProcess:
    """`orpheus-operator run` in a subprocess, pointed at the mock API by KUBECONFIG."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str]):
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = env
        self.args: tuple[str, ...] = ()  # more `run` flags, e.g. ("--namespace", "voices")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orpheus_operator.cli", "run", "--verbose", *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
        log.close()

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # kopf's graceful stop
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no graceful stop, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


FAST_SETTINGS = {
    "ORPHEUS_OPERATOR_ENGINE_POLL_S": "0.3",
    "ORPHEUS_OPERATOR_STATUS_INTERVAL_S": "0.5",
    "ORPHEUS_OPERATOR_BUILD_RETRY_BASE_S": "0.5",
    "ORPHEUS_OPERATOR_BUILD_RETRY_MAX_S": "2",
}
