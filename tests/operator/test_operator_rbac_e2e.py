"""The chart's RBAC is exactly what the running operator calls: the real operator (kopf and all)
goes through a voice's whole life against kmock, every request it makes with its token is
turned into the (API group, resource, verb) RBAC would check, and those must equal the rules
the chart grants, with nothing missing and nothing more. Run clusterwide (ClusterRole) and
watching one namespace (a Role there, a ClusterRole for what is cluster-scoped)."""

from __future__ import annotations

import copy

import pytest
from kmock._internal import parsing
from operator_testkit import DEPLOYMENTS, JOBS, NAMESPACE, eventually, job_name_for, load_example

from orpheus_operator.crd import PLURAL
from tests.chart.chart_testkit import by_kind, granted, render_objects

NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
TOKEN = "Bearer test-token"  # the operator's credentials in the kubeconfig (the test's own calls carry none)
GATEWAY = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]


def rbac_verb(request) -> str:
    method = request.method.value.upper() if hasattr(request.method, "value") else str(request.method).upper()
    if method == "GET":
        return "watch" if request.params.get("watch") in ("true", "1") else ("get" if request.name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def operator_calls(kmock) -> tuple[dict, dict]:
    """(namespaced, cluster-scoped) requests made with the operator's token: {(group, resource): verbs}.

    Discovery (/api, /apis, /version) names no resource and needs no rule. Creating an object with
    an owner reference that blocks the owner's deletion also needs `update` on the owner's
    finalizers (the API server's OwnerReferencesPermissionEnforcement), so that is derived too.
    """
    namespaced: dict[tuple[str, str], set[str]] = {}
    cluster: dict[tuple[str, str], set[str]] = {}
    for request in kmock:
        if request.headers.get("Authorization") != TOKEN or request.resource is None or not request.resource.plural:
            continue
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        scope = namespaced if request.namespace else cluster
        scope.setdefault((request.resource.group or "", resource), set()).add(rbac_verb(request))
        body = request.data if isinstance(request.data, dict) else {}
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion"):
                owner_group = ref["apiVersion"].rpartition("/")[0]
                namespaced.setdefault((owner_group, f"{PLURAL}/finalizers"), set()).add("update")
    return namespaced, cluster


async def a_voice_life(c, start_operator, *args: str) -> None:
    """Every path the operator has: build, roll out with a NetworkPolicy, a second voice sharing
    the engine, autoscaling and the policy turned off, a failed build retried. (Deleting a voice
    only patches its finalizer away, a call the first patch that added it already made.)"""
    await start_operator(*args)
    voice = load_example("voice-rtx4090-conversational.yaml")
    voice["spec"]["networkPolicy"] = {"enabled": True, "clients": GATEWAY}
    name, job = voice["metadata"]["name"], job_name_for(voice)
    await c.create_voice(voice, "uid-rbac-1")
    await eventually(lambda: c.get(JOBS, job), what="the build Job")
    await c.complete_job(job)
    await eventually(lambda: c.get(NETWORK_POLICIES, name) and c.get(HPAS, name), what="the NetworkPolicy and HPA")

    second = copy.deepcopy(voice)
    second["metadata"]["name"] = "zoe-chat"
    second["spec"]["voice"] = "zoe"
    await c.create_voice(second, "uid-rbac-2")
    await eventually(lambda: len(c.get(JOBS, job)["metadata"]["ownerReferences"]) == 2, what="a second Job owner")
    await eventually(lambda: c.get(DEPLOYMENTS, "zoe-chat"), what="the second voice's Deployment")

    await c.patch_voice(name, {"metadata": {"generation": 2},
                               "spec": {"autoscaling": {"enabled": False}, "networkPolicy": {"enabled": False}}})
    await eventually(lambda: c.get(HPAS, name) is None and c.get(NETWORK_POLICIES, name) is None,
                     what="the HPA and NetworkPolicy to be deleted")

    failing = load_example("voice-h100-longform.yaml")
    failing_job = job_name_for(failing)
    await c.create_voice(failing, "uid-rbac-3")
    await eventually(lambda: c.get(JOBS, failing_job), what="the second engine's build Job")
    await c.fail_job(failing_job)
    await eventually(lambda: (c.get(JOBS, failing_job) or {}).get("metadata", {}).get("annotations", {})
                     .get("tts.orpheus.io/build-attempt") == "2", what="the failed build deleted and retried")


async def test_clusterwide_rbac_is_exactly_what_the_operator_calls(mock_cluster, start_operator):
    await a_voice_life(mock_cluster, start_operator)
    namespaced, cluster = operator_calls(mock_cluster.kmock)
    assert namespaced.get(("batch", "jobs"), set()) >= {"create", "patch", "delete"}  # the life reached every path
    used: dict[tuple[str, str], set[str]] = {}
    for calls in (namespaced, cluster):
        for key, verbs in calls.items():
            used.setdefault(key, set()).update(verbs)
    (role,) = by_kind(render_objects(), "ClusterRole")
    assert granted(role["rules"]) == used


@pytest.fixture
def kmock_lists_namespaces(monkeypatch, mock_cluster):
    """The watched namespace exists and can be listed: kopf lists and watches namespaces when it
    serves named ones, and kmock 0.8 cannot parse `/api/v1/namespaces` (it takes `namespaces`
    for the namespace prefix and answers 500)."""
    mock_cluster.kmock.objects["v1/namespaces", None, NAMESPACE] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    original = parsing.parse_path

    def parse_path(path: str) -> parsing.ParsedPath:
        if path.rstrip("/") == "/api/v1/namespaces":
            return parsing.ParsedPath(group="", version="v1", plural="namespaces")
        return original(path)

    monkeypatch.setattr(parsing, "parse_path", parse_path)


async def test_namespaced_rbac_is_exactly_what_the_operator_calls_in_and_outside_its_namespace(
        kmock_lists_namespaces, mock_cluster, start_operator):
    await a_voice_life(mock_cluster, start_operator, "--namespace", NAMESPACE)
    namespaced, cluster = operator_calls(mock_cluster.kmock)
    objects = render_objects({"operator": {"watchNamespaces": [NAMESPACE]}})
    (role,) = by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert granted(role["rules"]) == namespaced
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert granted(cluster_role["rules"]) == cluster
