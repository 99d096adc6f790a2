"""Conditions of an OrpheusVoice, read from its children, and the status that carries them.

Three conditions, in the usual Kubernetes shape (type, status, reason, message,
lastTransitionTime, observedGeneration):

- `EngineReady`: the engine build Job for the voice's engine hash has succeeded.
- `Available`: the Deployment has at least one available pod.
- `Ready`: the voice is admissible, its engine is built, and it is available; when False, its
  reason is the first thing in the way (InsufficientGPUMemory, EngineBuilding, ...).

Everything here is pure: dicts in, dicts out; `now` is passed in.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

ENGINE_READY = "EngineReady"
AVAILABLE = "Available"
READY = "Ready"
CONDITION_TYPES = (ENGINE_READY, AVAILABLE, READY)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_rfc3339() -> str:
    return rfc3339(datetime.datetime.now(datetime.timezone.utc))


def _job_condition(job: dict, kind: str) -> dict | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_failed(job: dict | None) -> bool:
    return job is not None and _job_condition(job, "Failed") is not None


def job_failed_at(job: dict) -> datetime.datetime | None:
    """When the Job's Failed condition turned True (None if it does not say)."""
    cond = _job_condition(job, "Failed")
    stamp = (cond or {}).get("lastTransitionTime")
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def engine_condition(job: dict | None, job_name: str) -> Condition:
    """EngineReady from the build Job (None: the Job does not exist)."""
    if job is None:
        return Condition(ENGINE_READY, "False", "EngineBuildPending", f"build Job {job_name} is not created yet")
    status = job.get("status", {})
    if _job_condition(job, "Complete") is not None or (status.get("succeeded") or 0) > 0:
        return Condition(ENGINE_READY, "True", "EngineBuilt", f"build Job {job_name} succeeded")
    failed = _job_condition(job, "Failed")
    if failed is not None:
        detail = ": ".join(x for x in (failed.get("reason"), failed.get("message")) if x)
        return Condition(ENGINE_READY, "False", "EngineBuildFailed", f"build Job {job_name} failed: {detail or 'no reason given'}")
    if job.get("metadata", {}).get("deletionTimestamp"):
        return Condition(ENGINE_READY, "False", "EngineBuildRestarting", f"failed build Job {job_name} is being deleted")
    return Condition(
        ENGINE_READY,
        "False",
        "EngineBuilding",
        f"build Job {job_name} is running (active pods {status.get('active') or 0}, failed pods {status.get('failed') or 0})",
    )


def available_condition(deployment: dict | None, engine: Condition) -> Condition:
    """Available from the Deployment's status (None: not created, e.g. the engine is not built)."""
    if deployment is None:
        reason = "WaitingForEngine" if not engine.is_true else "DeploymentMissing"
        return Condition(AVAILABLE, "False", reason, "no Deployment yet")
    status = deployment.get("status", {})
    wanted = deployment.get("spec", {}).get("replicas", status.get("replicas") or 0)
    available = status.get("availableReplicas") or 0
    if available > 0:
        return Condition(AVAILABLE, "True", "MinimumReplicasAvailable", f"{available}/{wanted} pods available")
    if wanted == 0:
        return Condition(AVAILABLE, "False", "ScaledToZero", "the Deployment has 0 replicas")
    return Condition(AVAILABLE, "False", "NoPodsAvailable", f"0/{wanted} pods available")


def ready_condition(refusal: tuple[str, str] | None, engine: Condition | None, available: Condition | None) -> Condition:
    """Ready is True only when nothing is in the way; otherwise it names the first obstacle."""
    if refusal is not None:
        return Condition(READY, "False", refusal[0], refusal[1])
    for cond in (engine, available):
        if cond is None or not cond.is_true:
            return Condition(READY, "False", cond.reason if cond else "Unknown", cond.message if cond else "")
    return Condition(READY, "True", "Ready", "the engine is built and pods are serving")


def merge_conditions(existing: list[dict] | None, new: list[Condition], now: str, generation: int | None) -> list[dict]:
    """The conditions list after `new`: lastTransitionTime moves only when a status flips."""
    by_type = {c.get("type"): c for c in existing or []}
    merged = []
    for cond in new:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        entry = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    # Keep condition types that someone else added, after ours.
    merged += [c for t, c in by_type.items() if t not in {m["type"] for m in merged}]
    return merged


def replica_counts(deployment: dict | None) -> dict[str, int]:
    status = (deployment or {}).get("status", {})
    return {"replicas": status.get("replicas") or 0, "readyReplicas": status.get("readyReplicas") or 0}


def rolled_out(deployment: dict | None) -> bool:
    """Every pod runs the Deployment's current template and at least one is available (as
    `kubectl rollout status` judges it; a Deployment of 0 replicas has no pod to say so)."""
    if deployment is None:
        return False
    status = deployment.get("status", {})
    generation = deployment.get("metadata", {}).get("generation")
    if generation is not None and (status.get("observedGeneration") or 0) < generation:
        return False
    updated = status.get("updatedReplicas") or 0
    wanted = deployment.get("spec", {}).get("replicas", 1)
    return 0 < updated and wanted <= updated == (status.get("replicas") or 0) <= (status.get("availableReplicas") or 0)


def template_annotation(deployment: dict | None, key: str) -> str | None:
    return ((deployment or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}).get(key)
