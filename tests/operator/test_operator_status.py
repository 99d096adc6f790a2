"""Conditions from the children's status, and when lastTransitionTime moves."""

from __future__ import annotations

from orpheus_operator import status as st
from orpheus_operator.reconcile import changed_fields


def job(**status) -> dict:
    return {"metadata": {"name": "orpheus-engine-x"}, "status": status}


def test_engine_condition_follows_the_job():
    assert st.engine_condition(None, "j").reason == "EngineBuildPending"
    assert st.engine_condition(job(active=1), "j").reason == "EngineBuilding"
    assert st.engine_condition(job(succeeded=1), "j").is_true
    done = job(conditions=[{"type": "Complete", "status": "True"}])
    assert st.engine_condition(done, "j").reason == "EngineBuilt"
    failed = job(failed=3, conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}])
    cond = st.engine_condition(failed, "j")
    assert (cond.status, cond.reason) == ("False", "EngineBuildFailed")
    assert cond.message == "build Job j failed: DeadlineExceeded: too slow"
    assert st.job_failed(failed) and not st.job_failed(done)


def test_available_needs_an_available_pod():
    engine = st.Condition(st.ENGINE_READY, "True", "EngineBuilt", "")
    assert st.available_condition(None, engine).reason == "DeploymentMissing"
    starting = {"spec": {"replicas": 2}, "status": {"replicas": 2}}
    assert st.available_condition(starting, engine).message == "0/2 pods available"
    serving = {"spec": {"replicas": 2}, "status": {"replicas": 2, "availableReplicas": 1}}
    assert st.available_condition(serving, engine).is_true


def test_ready_names_the_first_obstacle():
    building = st.Condition(st.ENGINE_READY, "False", "EngineBuilding", "job running")
    available = st.Condition(st.AVAILABLE, "True", "MinimumReplicasAvailable", "1/1")
    assert st.ready_condition(("InsufficientGPUMemory", "numbers"), building, available).reason == "InsufficientGPUMemory"
    assert st.ready_condition(None, building, available).reason == "EngineBuilding"
    built = st.Condition(st.ENGINE_READY, "True", "EngineBuilt", "")
    assert st.ready_condition(None, built, available).is_true


def test_transition_time_moves_only_when_the_status_flips():
    first = st.merge_conditions([], [st.Condition("Ready", "False", "EngineBuilding", "a")], "T1", 1)
    same = st.merge_conditions(first, [st.Condition("Ready", "False", "NoPodsAvailable", "b")], "T2", 2)
    flipped = st.merge_conditions(same, [st.Condition("Ready", "True", "Ready", "c")], "T3", 2)
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["T1", "T1", "T3"]
    assert same[0]["reason"] == "NoPodsAvailable" and same[0]["observedGeneration"] == 2


def test_conditions_set_by_others_are_kept():
    theirs = [{"type": "Audited", "status": "True", "reason": "x", "message": "", "lastTransitionTime": "T0"}]
    merged = st.merge_conditions(theirs, [st.Condition("Ready", "True", "Ready", "")], "T1", None)
    assert [c["type"] for c in merged] == ["Ready", "Audited"]


def test_an_unchanged_status_is_not_patched():
    current = {"replicas": 1, "engineHash": "h"}
    assert changed_fields(current, {"replicas": 1, "engineHash": "h"}) == {}
    assert changed_fields(current, {"replicas": 2, "engineHash": "h"}) == {"replicas": 2}
