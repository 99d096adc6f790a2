"""`reconcile.rollout` against an in-memory cluster: the build backoff and idempotence."""

from __future__ import annotations

import copy
import datetime

from operator_testkit import load_example

from orpheus_operator import reconcile
from orpheus_operator.kube import Conflict
from orpheus_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(engine_poll_s=1, status_interval_s=1, build_retry_base_s=60, build_retry_max_s=600)


class FakeCluster:
    """Objects by (kind, namespace, name); apply replaces, as a full server-side apply would."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.calls: list[str] = []

    def _key(self, kind, namespace, name):
        return (kind, namespace, name)

    def get(self, api_version, kind, namespace, name):
        self.calls.append(f"get {kind}")
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj)

    def create(self, obj):
        self.calls.append(f"create {obj['kind']}")
        key = self._key(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise Conflict(key)
        self.objects[key] = copy.deepcopy(obj)
        return copy.deepcopy(obj)

    def apply(self, obj):
        self.calls.append(f"apply {obj['kind']}")
        key = self._key(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        live = self.objects[key]
        self.objects[key] = {**copy.deepcopy(obj), "status": live.get("status", {})}
        if "replicas" in live.get("spec", {}) and "replicas" not in obj["spec"]:
            self.objects[key]["spec"]["replicas"] = live["spec"]["replicas"]  # owned by someone else
        return copy.deepcopy(self.objects[key])

    def merge_patch(self, api_version, kind, namespace, name, patch):
        self.calls.append(f"patch {kind}")
        self.objects[self._key(kind, namespace, name)]["metadata"].update(patch["metadata"])

    def delete(self, api_version, kind, namespace, name):
        self.calls.append(f"delete {kind}")
        return self.objects.pop(self._key(kind, namespace, name), None) is not None


def body() -> dict:
    voice = load_example("voice-rtx4090-conversational.yaml")
    voice["metadata"].update(namespace="voices", uid="uid-1", generation=1)
    return voice


def jobs(cluster: FakeCluster) -> list[dict]:
    return [o for (kind, _, _), o in cluster.objects.items() if kind == "Job"]


def failed(seconds_ago: int) -> dict:
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    stamp = when.isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": stamp}]}


def test_a_failed_build_waits_out_its_backoff_in_place_whoever_asks():
    cluster, voice = FakeCluster(), body()
    reconcile.rollout(voice, cluster, {}, SETTINGS)
    (job,) = jobs(cluster)
    job["status"] = failed(seconds_ago=10)

    for _ in range(3):  # events, restarts, a second voice: nothing is deleted or created early
        out = reconcile.rollout(voice, cluster, {}, SETTINGS)
        assert jobs(cluster) == [job] and 49 <= out.retry_in_s <= 50
    assert out.status["engineBuildFailures"] == 1 and out.status["engineBuildRetryAt"]
    engine = out.status["conditions"][0]
    assert (engine["reason"], engine["status"]) == ("EngineBuildFailed", "False")
    assert "DeadlineExceeded; build attempt 2 at" in engine["message"]
    assert reconcile.observe(voice, cluster, out.status, SETTINGS)["conditions"][0] == engine  # the timer agrees

    job["status"] = failed(seconds_ago=61)  # base backoff 60 s: over
    out = reconcile.rollout(voice, cluster, {}, SETTINGS)
    (second,) = jobs(cluster)
    assert reconcile.build_attempt(second) == 2 and "status" not in second
    assert out.status["engineBuildRetryAt"] is None
    assert "attempt 2, the last one failed" in out.status["conditions"][0]["message"]

    second["status"] = failed(seconds_ago=61)  # attempt 2 fails too: now 120 s
    out = reconcile.rollout(voice, cluster, {}, SETTINGS)
    assert jobs(cluster) == [second] and 58 <= out.retry_in_s <= 59


def test_rollout_twice_creates_once_and_keeps_the_hpa_replicas():
    cluster, voice, status = FakeCluster(), body(), {}
    reconcile.rollout(voice, cluster, status, SETTINGS)
    (job,) = jobs(cluster)
    job["status"] = {"succeeded": 1}
    first = reconcile.rollout(voice, cluster, status, SETTINGS)
    assert first.retry_in_s is None
    creates = [c for c in cluster.calls if c.startswith("create")]
    assert creates == ["create Job", "create Deployment", "create Service", "create HorizontalPodAutoscaler", "create PodDisruptionBudget"]

    cluster.objects[("Deployment", "voices", "tara-chat")]["spec"]["replicas"] = 5  # the HPA scaled out
    cluster.calls.clear()
    second = reconcile.rollout(voice, cluster, status, SETTINGS)
    assert [c for c in cluster.calls if c.startswith("create")] == ["create Deployment", "create Service",
                                                                   "create HorizontalPodAutoscaler", "create PodDisruptionBudget"]
    assert cluster.objects[("Deployment", "voices", "tara-chat")]["spec"]["replicas"] == 5
    assert len(cluster.objects) == 5 and second.status["engineHash"] == first.status["engineHash"]


def test_refused_voice_touches_nothing():
    cluster, voice = FakeCluster(), body()
    voice["spec"]["sessionsPerPod"] = 1000
    voice["spec"]["maxBatchSize"] = 16
    out = reconcile.rollout(voice, cluster, {}, SETTINGS)
    assert cluster.objects == {} and all(c.startswith("get") for c in cluster.calls)
    ready = out.status["conditions"][2]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InsufficientGPUMemory")
