"""The shape of the chart's RBAC. That its rules are exactly what the operator calls, nothing
missing and nothing more, is tested against the running operator's own requests in
tests/operator/test_operator_rbac_e2e.py; here, what holds across watched namespaces."""

from __future__ import annotations

from chart_testkit import ALL_ON, NAMESPACE, by_kind, granted, render_objects


def test_each_watched_namespace_gets_the_same_role_bound_to_the_operator():
    objects = render_objects(ALL_ON)
    roles = {r["metadata"]["namespace"]: granted(r["rules"]) for r in by_kind(objects, "Role")}
    assert set(roles) == {"voices", NAMESPACE}
    assert roles["voices"] == roles[NAMESPACE]
    (clusterwide,) = by_kind(render_objects(), "ClusterRole")
    namespaced_part = {k: v for k, v in granted(clusterwide["rules"]).items() if k[1] != "customresourcedefinitions"}
    assert roles["voices"] == namespaced_part  # the same rules as the ClusterRole of a clusterwide install
    (service_account,) = by_kind(objects, "ServiceAccount")
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account["metadata"]["name"],
                                        "namespace": NAMESPACE}]
        assert binding["roleRef"]["name"] == by_kind(objects, "Role")[0]["metadata"]["name"]


def test_no_rule_uses_a_wildcard():
    for obj in render_objects(ALL_ON) + render_objects():
        for rule in obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (obj["metadata"]["name"], rule)
