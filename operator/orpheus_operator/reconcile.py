"""What the handlers do with the cluster: ensure the build Job, roll out, and read back status.

`rollout` runs on create, resume and spec updates; it is idempotent (deterministic names,
get-or-create, server-side apply), so running it twice, or after a restart halfway, changes
nothing. `observe` runs on a timer and only reads. Both return the status fields to patch;
the handlers hand them to kopf.
"""

from __future__ import annotations

import copy
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from . import status as st
from .kube import Cluster, Conflict
from .labels import ADAPTERS_ANNOTATION, BUILD_ATTEMPT_ANNOTATION
from .plan import Plan, plan
from . import serving
from .serving import initial_replicas, managed_replicas
from .settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Status fields to patch, and when to run again (None: done until something changes)."""

    status: dict[str, Any] = field(default_factory=dict)
    retry_in_s: float | None = None
    waiting_for: str = ""


def rollout(body: Mapping[str, Any], cluster: Cluster, status: Mapping[str, Any], settings: OperatorSettings) -> Outcome:
    p = plan(body, settings)
    current = dict(status or {})
    generation = body.get("metadata", {}).get("generation")
    deployment = cluster.get("apps/v1", "Deployment", p.voice.namespace, p.voice.name)

    if p.refusal is not None:
        engine = st.Condition(st.ENGINE_READY, "False", "SpecRefused", "no engine is built for a refused spec")
        ready = st.ready_condition((p.refusal.reason, p.refusal.message), None, None)
        conditions = [engine, st.available_condition(deployment, engine), ready]
        return Outcome(status=_status(p, current, conditions, deployment, generation))

    job = _ensure_job(p, body, cluster, attempt=1)
    if st.job_failed(job):
        # The failed Job stays until its backoff is over: the wait lives in the cluster, so early
        # calls (other events, a restart, another voice sharing the build) cannot cut it short.
        engine, retry_at = _failed_build(p, job, settings)
        wait_s = (retry_at - _now()).total_seconds()
        if wait_s > 0:
            out = _status(p, current, _conditions(p, engine, deployment), deployment, generation,
                          engineBuildFailures=build_attempt(job), engineBuildRetryAt=st.rfc3339(retry_at))
            return Outcome(status=out, retry_in_s=wait_s, waiting_for=engine.message)
        cluster.delete("batch/v1", "Job", p.voice.namespace, p.job_name)
        job = _ensure_job(p, body, cluster, attempt=build_attempt(job) + 1)

    failures = build_attempt(job) - 1 if job else 0
    engine = st.engine_condition(job, p.job_name)

    if not engine.is_true:
        # Old pods (if any) keep serving the old engine until the new one is built.
        if failures:
            engine = st.Condition(engine.type, engine.status, engine.reason, f"{engine.message}; attempt {failures + 1}, the last one failed")
        conditions = _conditions(p, engine, deployment)
        out = _status(p, current, conditions, deployment, generation, engineBuildFailures=failures, engineBuildRetryAt=None)
        return Outcome(status=out, retry_in_s=settings.engine_poll_s, waiting_for=engine.message)

    deployment = _apply_serving(p, body, cluster) or deployment
    conditions = _conditions(p, engine, deployment)
    out = _status(p, current, conditions, deployment, generation, engineBuildFailures=failures, engineBuildRetryAt=None)
    return Outcome(status=out)


def observe(body: Mapping[str, Any], cluster: Cluster, status: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Status refreshed from the live Job and Deployment; creates and changes nothing."""
    p = plan(body, settings)
    current = dict(status or {})
    deployment = cluster.get("apps/v1", "Deployment", p.voice.namespace, p.voice.name)
    # observedGeneration is the rollout's to set: the timer only reports on what it rolled out.
    generation = current.get("observedGeneration")
    if p.refusal is not None:
        engine = st.Condition(st.ENGINE_READY, "False", "SpecRefused", "no engine is built for a refused spec")
        ready = st.ready_condition((p.refusal.reason, p.refusal.message), None, None)
        conditions = [engine, st.available_condition(deployment, engine), ready]
    else:
        job = cluster.get("batch/v1", "Job", p.voice.namespace, p.job_name)
        engine = _failed_build(p, job, settings)[0] if st.job_failed(job) else st.engine_condition(job, p.job_name)
        conditions = _conditions(p, engine, deployment)
    return _status(p, current, conditions, deployment, generation)


def changed_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `desired` that differs from `current`, so an unchanged status is not patched."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def build_attempt(job: Mapping[str, Any]) -> int:
    """Which build of this engine the Job is: 1, or more after failures (an annotation on the Job)."""
    return int(job.get("metadata", {}).get("annotations", {}).get(BUILD_ATTEMPT_ANNOTATION, 1))


def _failed_build(p: Plan, job: Mapping[str, Any], settings: OperatorSettings) -> tuple[st.Condition, datetime.datetime]:
    """EngineReady for a failed Job, and when the next attempt starts (backoff from its failure)."""
    attempt = build_attempt(job)
    delay = datetime.timedelta(seconds=settings.build_retry_delay_s(attempt))
    retry_at = (st.job_failed_at(dict(job)) or _now()) + delay
    failed = st.engine_condition(dict(job), p.job_name)
    message = f"{failed.message}; build attempt {attempt + 1} at {st.rfc3339(retry_at)}"
    return st.Condition(failed.type, "False", failed.reason, message), retry_at


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _conditions(p: Plan, engine: st.Condition, deployment: dict | None) -> list[st.Condition]:
    available = st.available_condition(deployment, engine)
    return [engine, available, st.ready_condition(None, engine, available)]


def _status(p: Plan, current: dict, conditions: list[st.Condition], deployment: dict | None,
            generation: int | None, **extra: Any) -> dict[str, Any]:
    now = st.now_rfc3339()
    out: dict[str, Any] = {
        "conditions": st.merge_conditions(current.get("conditions"), conditions, now, generation),
        # Without a (known) GPU profile there is no engine and no budget: None clears old values.
        "engineHash": p.engine_hash,
        "engineJob": p.job_name,
        "gpuProfile": p.voice.gpu_profile,
        "maxSessionsPerPod": p.voice.budget.max_sessions if p.voice.has_known_gpu else None,
        "selector": p.selector,
        "adapters": p.voice.adapters.status(st.template_annotation(deployment, ADAPTERS_ANNOTATION),
                                            st.rolled_out(deployment)),
        **st.replica_counts(deployment),
        **extra,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _ensure_job(p: Plan, owner: Mapping[str, Any], cluster: Cluster, attempt: int) -> dict | None:
    """The build Job for this engine hash, created if missing, with this voice among its owners.

    Jobs are shared by every voice with the same engine hash, so each voice is a non-controller
    owner: the Job is garbage-collected when the last of them is deleted.
    """
    ns = p.voice.namespace
    live = cluster.get("batch/v1", "Job", ns, p.job_name)
    if live is None:
        job = copy.deepcopy(p.job)
        job["metadata"]["annotations"][BUILD_ATTEMPT_ANNOTATION] = str(attempt)
        kopf.append_owner_reference(job, owner=dict(owner), controller=False)
        try:
            return cluster.create(job)
        except Conflict:
            live = cluster.get("batch/v1", "Job", ns, p.job_name)
            if live is None:
                return None
    refs = live.get("metadata", {}).get("ownerReferences") or []
    uid = owner.get("metadata", {}).get("uid")
    if uid and not any(ref.get("uid") == uid for ref in refs):
        probe: dict = {"metadata": {}}
        kopf.append_owner_reference(probe, owner=dict(owner), controller=False)
        new_refs = refs + probe["metadata"]["ownerReferences"]
        cluster.merge_patch("batch/v1", "Job", ns, p.job_name, {"metadata": {"ownerReferences": new_refs}})
        live.setdefault("metadata", {})["ownerReferences"] = new_refs
    return live


def _apply_serving(p: Plan, owner: Mapping[str, Any], cluster: Cluster) -> dict | None:
    """Create or update the serving objects; remove an HPA or NetworkPolicy no longer wanted.

    Returns the Deployment as the API server answered.
    """
    voice = p.voice
    deployment = None
    for obj in p.serving(managed_replicas(voice)):
        kopf.adopt(obj, owner=dict(owner), strict=True)
        if obj["kind"] == "Deployment":
            # Created with a replica count; updated without one when the HPA owns it.
            first = serving.deployment(voice, p.engine_hash, initial_replicas(voice))
            kopf.adopt(first, owner=dict(owner), strict=True)
            deployment = _create_or_apply(cluster, obj, create_as=first)
        else:
            _create_or_apply(cluster, obj)
    for obj in serving.unwanted_objects(voice, p.engine_hash):
        if cluster.delete(obj["apiVersion"], obj["kind"], voice.namespace, voice.name):
            log.info("%s/%s no longer wants its %s: removed", voice.namespace, voice.name, obj["kind"])
    return deployment


def _create_or_apply(cluster: Cluster, obj: dict, create_as: dict | None = None) -> dict:
    try:
        return cluster.create(create_as or obj)
    except Conflict:
        return cluster.apply(obj)
