"""The Pod Security Standard "restricted" profile, as checks on a pod spec.

Written from the Kubernetes Pod Security Standards page (kubernetes.io/docs/concepts/security/
pod-security-standards, profiles as of Kubernetes 1.31: every Baseline control, then the
Restricted ones); the Windows-only parts apply to Linux pods too where they must be unset. What
the admission controller (`pod-security.kubernetes.io/enforce: restricted`) would refuse, this
reports, one message per broken control, so a test names exactly what to fix.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

# Restricted: volume types other than these are refused (hostPath, nfs, and the in-tree drivers).
ALLOWED_VOLUME_KEYS = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_CONFINED = {"RuntimeDefault", "Localhost"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}


def containers(pod: dict) -> Iterator[dict]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def _context(container: dict) -> dict:
    return container.get("securityContext") or {}


def _host_process(pod: dict, _: dict) -> Iterator[str]:
    contexts = [pod.get("securityContext") or {}, *(_context(c) for c in containers(pod))]
    if any((ctx.get("windowsOptions") or {}).get("hostProcess") for ctx in contexts):
        yield "windowsOptions.hostProcess must be unset or false"


def _host_namespaces(pod: dict, _: dict) -> Iterator[str]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            yield f"{key} must be unset or false"


def _privileged(pod: dict, _: dict) -> Iterator[str]:
    for c in containers(pod):
        if _context(c).get("privileged"):
            yield f"container {c['name']}: privileged must be unset or false"


def _host_ports(pod: dict, _: dict) -> Iterator[str]:
    for c in containers(pod):
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                yield f"container {c['name']}: hostPort must be unset or 0"


def _apparmor(pod: dict, metadata: dict) -> Iterator[str]:
    contexts = [pod.get("securityContext") or {}, *(_context(c) for c in containers(pod))]
    for ctx in contexts:
        kind = (ctx.get("appArmorProfile") or {}).get("type")
        if kind is not None and kind not in APPARMOR_TYPES:
            yield f"appArmorProfile.type {kind} is not RuntimeDefault or Localhost"
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            yield f"annotation {key}: {value} is not runtime/default or localhost/*"


def _selinux(pod: dict, _: dict) -> Iterator[str]:
    contexts = [pod.get("securityContext") or {}, *(_context(c) for c in containers(pod))]
    for ctx in contexts:
        options = ctx.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            yield f"seLinuxOptions {options} set a type outside {sorted(SELINUX_TYPES)}, a user or a role"


def _proc_mount(pod: dict, _: dict) -> Iterator[str]:
    for c in containers(pod):
        if _context(c).get("procMount", "Default") != "Default":
            yield f"container {c['name']}: procMount must be unset or Default"


def _sysctls(pod: dict, _: dict) -> Iterator[str]:
    for sysctl in (pod.get("securityContext") or {}).get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"sysctl {sysctl['name']} is not in the safe set"


def _volume_types(pod: dict, _: dict) -> Iterator[str]:
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_KEYS:
            yield f"volume {volume['name']}: type {sorted(kinds - ALLOWED_VOLUME_KEYS)} is not allowed"


def _privilege_escalation(pod: dict, _: dict) -> Iterator[str]:
    for c in containers(pod):
        if _context(c).get("allowPrivilegeEscalation") is not False:
            yield f"container {c['name']}: allowPrivilegeEscalation must be false"


def _run_as_non_root(pod: dict, _: dict) -> Iterator[str]:
    pod_level = (pod.get("securityContext") or {}).get("runAsNonRoot")
    for c in containers(pod):
        own = _context(c).get("runAsNonRoot")
        if own is False or (own is None and pod_level is not True):
            yield f"container {c['name']}: runAsNonRoot must be true (on the pod or the container)"


def _run_as_user(pod: dict, _: dict) -> Iterator[str]:
    contexts = [pod.get("securityContext") or {}, *(_context(c) for c in containers(pod))]
    if any(ctx.get("runAsUser") == 0 for ctx in contexts):
        yield "runAsUser must not be 0"


def _seccomp(pod: dict, _: dict) -> Iterator[str]:
    pod_level = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    if pod_level is not None and pod_level not in SECCOMP_CONFINED:
        yield f"pod seccompProfile.type {pod_level} is not RuntimeDefault or Localhost"
    for c in containers(pod):
        own = (_context(c).get("seccompProfile") or {}).get("type")
        if (own or pod_level) not in SECCOMP_CONFINED:
            yield f"container {c['name']}: seccompProfile.type must be RuntimeDefault or Localhost"


def _capabilities(pod: dict, _: dict) -> Iterator[str]:
    for c in containers(pod):
        caps = _context(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"container {c['name']}: capabilities.drop must include ALL"
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            yield f"container {c['name']}: capabilities.add may hold only NET_BIND_SERVICE"


CONTROLS: dict[str, Callable[[dict, dict], Iterator[str]]] = {
    # Baseline
    "HostProcess": _host_process,
    "Host Namespaces": _host_namespaces,
    "Privileged Containers": _privileged,
    "Host Ports": _host_ports,
    "AppArmor": _apparmor,
    "SELinux": _selinux,
    "/proc Mount Type": _proc_mount,
    "Sysctls": _sysctls,
    # Restricted (its Volume Types and Capabilities also cover Baseline's HostPath and Capabilities)
    "Volume Types": _volume_types,
    "Privilege Escalation": _privilege_escalation,
    "Running as Non-root": _run_as_non_root,
    "Running as Non-root user": _run_as_user,
    "Seccomp": _seccomp,
    "Capabilities": _capabilities,
}


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What breaks the restricted profile in a pod template ({metadata, spec}), `control: detail` each."""
    pod, metadata = template["spec"], template.get("metadata") or {}
    return [f"{name}: {problem}" for name, check in CONTROLS.items() for problem in check(pod, metadata)]


def pod_templates(obj: dict) -> list[dict]:
    """The pod templates in an object: a Pod itself, a workload's template, a CronJob's job's."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "Pod":
        return [{"metadata": obj.get("metadata", {}), "spec": spec}]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return [spec["template"]] if isinstance(spec.get("template"), dict) and "spec" in spec["template"] else []
