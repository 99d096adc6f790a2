"""The chart's RBAC is exactly what the operator calls: its reconcile code runs against a
recording API (the operator's real `kube.Cluster` over a fake HTTP client), and the verbs per
resource it used must equal the chart's rules. kopf's own needs are listed by hand below."""

from __future__ import annotations

import copy
import datetime
import json
import re

import yaml
from chart_testkit import ALL_ON, NAMESPACE, REPO_ROOT, by_kind, render_objects
from kubernetes.client.rest import ApiException

from orpheus_operator import reconcile
from orpheus_operator.kube import Cluster
from orpheus_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(engine_poll_s=1, status_interval_s=1, build_retry_base_s=60, build_retry_max_s=600)
VERB = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}
PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")

# What kopf itself does (kopf 1.x: watching, patching, events, resource discovery), per resource.
KOPF = {
    ("tts.orpheus.io", "orpheusvoices"): {"list", "watch", "patch"},
    ("tts.orpheus.io", "orpheusvoices/status"): {"patch"},
    ("tts.orpheus.io", "orpheusvoices/finalizers"): {"update"},  # blockOwnerDeletion on the children
    ("", "events"): {"create"},
}
KOPF_CLUSTER = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}


class _Response:
    def __init__(self, obj: dict | None):
        self.data = json.dumps(obj).encode() if obj is not None else b""


class RecordingApi:
    """Stands in for kubernetes.client.ApiClient: objects by path, every call recorded as RBAC would see it."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.used: dict[tuple[str, str], set[str]] = {}

    def call_api(self, path, method, query_params=(), header_params=None, body=None, **_):
        match = PATH.match(path)
        assert match, path
        self.used.setdefault((match["group"] or "", match["plural"]), set()).add(VERB[method])
        if method == "POST":
            key = f"{path}/{body['metadata']['name']}"
            if key in self.objects:
                raise ApiException(status=409)
            self.objects[key] = copy.deepcopy(body)
            return _Response(body)
        if path not in self.objects:
            raise ApiException(status=404)
        if method == "GET":
            return _Response(self.objects[path])
        if method == "DELETE":
            del self.objects[path]
            return _Response({})
        live = self.objects[path]
        if header_params["Content-Type"] == "application/merge-patch+json":
            live["metadata"].update(body["metadata"])
        else:
            self.objects[path] = {**copy.deepcopy(body), "status": live.get("status", {})}
        return _Response(self.objects[path])

    def job(self) -> dict:
        (job,) = [o for p, o in self.objects.items() if "/jobs/" in p]
        return job


def voice(name: str, uid: str, **spec) -> dict:
    body = yaml.safe_load((REPO_ROOT / "examples" / "voice-rtx4090-conversational.yaml").read_text())
    body["metadata"].update(name=name, namespace="voices", uid=uid, generation=1)
    body["spec"].update(spec)
    return body


def operator_calls() -> dict[tuple[str, str], set[str]]:
    """Every call of a voice's life: build, rollout, re-apply, shared engine, autoscaling off, failed build."""
    api = RecordingApi()
    cluster = Cluster(api)
    tara, zoe = voice("tara-chat", "uid-1"), voice("zoe-chat", "uid-2", voice="zoe")
    reconcile.rollout(tara, cluster, {}, SETTINGS)  # creates the build Job
    api.job()["status"] = {"succeeded": 1}
    reconcile.rollout(tara, cluster, {}, SETTINGS)  # creates Deployment, Service, HPA, PDB
    reconcile.rollout(tara, cluster, {}, SETTINGS)  # 409s, then server-side applies
    reconcile.rollout(zoe, cluster, {}, SETTINGS)  # the same engine: zoe joins the Job's owners
    reconcile.observe(tara, cluster, {}, SETTINGS)  # the status timer reads
    off = copy.deepcopy(tara)
    off["spec"]["autoscaling"] = {**off["spec"]["autoscaling"], "enabled": False}
    reconcile.rollout(off, cluster, {}, SETTINGS)  # removes the HPA
    long_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat(timespec="seconds")
    api.job()["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                            "lastTransitionTime": long_ago.replace("+00:00", "Z")}]}
    reconcile.rollout(tara, cluster, {}, SETTINGS)  # backoff over: the failed Job is deleted and recreated
    return api.used


def granted(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_clusterwide_rbac_is_exactly_what_the_operator_and_kopf_use():
    used = operator_calls()
    assert used[("batch", "jobs")] >= {"create", "patch", "delete"}  # the scenarios reached every path
    (role,) = by_kind(render_objects(), "ClusterRole")
    assert granted(role["rules"]) == {**used, **KOPF, **KOPF_CLUSTER}


def test_namespaced_rbac_grants_the_same_in_each_watched_namespace_only():
    objects = render_objects(ALL_ON)
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objects, "Role")}
    assert set(roles) == {"voices", NAMESPACE}
    expected = {**operator_calls(), **KOPF}
    for role in roles.values():
        assert granted(role["rules"]) == expected
    (cluster_role,) = [r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-operator-cluster")]
    # kopf lists and watches namespaces when it serves only some of them.
    assert granted(cluster_role["rules"]) == {**KOPF_CLUSTER, ("", "namespaces"): {"list", "watch"}}
    bindings = by_kind(objects, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"voices", NAMESPACE}


def test_no_rule_uses_a_wildcard():
    for obj in render_objects(ALL_ON) + render_objects():
        for rule in obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (obj["metadata"]["name"], rule)
