"""Every pod the chart and the operator make passes the Pod Security Standard "restricted" profile,
so they run in a namespace labelled `pod-security.kubernetes.io/enforce: restricted`: the
operator's Deployment (chart), each voice's engine-build Job and server Deployment (operator,
configured by the chart), with keys, mutual TLS and PVC sources on, and with nothing on."""

from __future__ import annotations

import copy
import functools

import pytest
import yaml
from chart_testkit import ALL_ON, REPO_ROOT, VOICES, operator_env, render_objects
from pod_security import CONTROLS, pod_templates, restricted_violations

from orpheus_operator.plan import render
from orpheus_operator.settings import OperatorSettings


def operator_rendered(values: dict | None) -> list[dict]:
    """What the operator, configured as the chart configures it, makes for the chart's and the example voices."""
    settings = OperatorSettings.from_env(operator_env(values))
    bodies = [{"apiVersion": "tts.orpheus.io/v1alpha1", "kind": "OrpheusVoice",
               "metadata": {"name": v["name"], "namespace": "voices"}, "spec": v["spec"]} for v in VOICES[1:]]
    for example in sorted((REPO_ROOT / "examples").glob("voice-*.yaml")):
        body = yaml.safe_load(example.read_text())
        bodies.append({**body, "metadata": {**body["metadata"], "namespace": "voices"}})
    return [obj for body in bodies for obj in render(body, settings)]


@functools.cache
def every_pod_template() -> tuple[tuple[str, dict], ...]:
    out: list[tuple[str, dict]] = []
    for values in (None, ALL_ON):
        for obj in render_objects(values) + operator_rendered(values):
            out += [(f"{obj['kind']} {obj['metadata']['name']}", t) for t in pod_templates(obj)]
    return tuple(out)


def test_every_rendered_pod_passes_the_restricted_profile():
    templates = every_pod_template()
    kinds = {name.split()[0] for name, _ in templates}
    assert kinds == {"Deployment", "Job"}  # the operator, the servers, the builds: every pod there is
    assert any("exec" in t["spec"]["containers"][0].get("readinessProbe", {}) for _, t in templates)  # mTLS on
    problems = {name: restricted_violations(t) for name, t in templates if restricted_violations(t)}
    assert not problems, problems


# One breach per control, each on an otherwise passing pod: the checker must name that control.
BREACHES = {
    "HostProcess": lambda p, c: p["securityContext"].update(windowsOptions={"hostProcess": True}),
    "Host Namespaces": lambda p, c: p.update(hostNetwork=True),
    "Privileged Containers": lambda p, c: c["securityContext"].update(privileged=True),
    "Host Ports": lambda p, c: c["ports"][0].update(hostPort=8000),
    "AppArmor": lambda p, c: c["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
    "SELinux": lambda p, c: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "/proc Mount Type": lambda p, c: c["securityContext"].update(procMount="Unmasked"),
    "Sysctls": lambda p, c: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "Volume Types": lambda p, c: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    "Privilege Escalation": lambda p, c: c["securityContext"].pop("allowPrivilegeEscalation"),
    "Running as Non-root": lambda p, c: p["securityContext"].pop("runAsNonRoot"),
    "Running as Non-root user": lambda p, c: c["securityContext"].update(runAsUser=0),
    "Seccomp": lambda p, c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "Capabilities": lambda p, c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
}


@pytest.mark.parametrize("control", list(CONTROLS))
def test_the_check_catches_a_breach_of_each_control(control):
    server = next(t for _, t in every_pod_template() if t["spec"]["containers"][0]["name"] == "server")
    template = copy.deepcopy(server)
    assert restricted_violations(template) == []
    BREACHES[control](template["spec"], template["spec"]["containers"][0])
    assert [v for v in restricted_violations(template) if v.startswith(f"{control}: ")], control
