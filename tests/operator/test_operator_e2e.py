"""The real operator (kopf, `orpheus-operator run` in a subprocess) against kmock as the API server."""

from __future__ import annotations

from operator_testkit import DEPLOYMENTS, JOBS, NAMESPACE, VOICES, eventually, job_name_for, load_example

from orpheus_operator.crd import GROUP, PLURAL, VERSION

SERVING = {
    DEPLOYMENTS: "Deployment",
    "v1/services": "Service",
    "autoscaling/v2/horizontalpodautoscalers": "HorizontalPodAutoscaler",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
}
VOICE_UID = "0b6c1f36-8d5e-4c1b-9d9e-2f6a4b1c0001"


async def test_voice_builds_engine_then_rolls_out_and_survives_a_restart(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    await start_operator()
    await c.create_voice(voice, VOICE_UID)

    # The build Job appears, owned (not controlled: it is shared) by the voice; nothing serves yet.
    job = await eventually(lambda: c.get(JOBS, job_name), what="the engine build Job")
    assert job["metadata"]["ownerReferences"][0]["uid"] == VOICE_UID
    assert job["metadata"]["ownerReferences"][0]["controller"] is False
    await eventually(lambda: (c.condition(name, "EngineReady") or {}).get("reason") == "EngineBuilding",
                     what="EngineReady=False/EngineBuilding")
    assert c.objects(DEPLOYMENTS) == {}

    # The Job completes: Deployment, Service, HPA and PDB appear, each controlled by the voice.
    await c.complete_job(job_name)
    for resource in SERVING:
        child = await eventually(lambda r=resource: c.get(r, name), what=SERVING[resource])
        ref = child["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("OrpheusVoice", name, VOICE_UID, True)
    deployment = c.get(DEPLOYMENTS, name)
    assert deployment["spec"]["replicas"] == 1  # autoscaling.minReplicas, set at creation only
    assert "scheduler.max_concurrent_sessions=48" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # The status patch follows the children it reports on: wait for it rather than race it.
    await eventually(lambda: (c.condition(name, "EngineReady") or {}).get("status") == "True", what="EngineReady=True")

    # The pods become available (kmock has no Deployment controller: the test plays it): Ready.
    await c.make_pods_available(name)
    ready = await eventually(lambda: (c.condition(name, "Ready") or {}).get("status") == "True" and c.condition(name, "Ready"),
                             what="Ready=True")
    assert ready["observedGeneration"] == 1
    status = c.get(VOICES, name)["status"]
    assert status["replicas"] == 1 and status["engineHash"] in job_name
    assert status["selector"] == "app.kubernetes.io/component=server,app.kubernetes.io/instance=tara-chat,app.kubernetes.io/name=orpheus-tts"

    # The HPA has scaled the Deployment to 3. A new slot budget needs an engine compiled for its
    # buckets: a second build Job, while the running pods keep the old engine and settings.
    await c.request("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}", {"spec": {"replicas": 3}})
    changed = {"sessionsPerPod": 40, "maxBatchSize": 24}
    await c.patch_voice(name, {"metadata": {"generation": 2}, "spec": changed})
    new_job = job_name_for({**voice, "spec": {**voice["spec"], **changed}})
    assert new_job != job_name
    await eventually(lambda: c.get(JOBS, new_job), what="the build Job for the new slot budget")
    assert "scheduler.max_concurrent_sessions=48" in c.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]["args"]

    # It completes: the change rolls out without touching the HPA's replicas.
    await c.complete_job(new_job)

    def rolled_out():
        d = c.get(DEPLOYMENTS, name)
        return "scheduler.max_concurrent_sessions=40" in d["spec"]["template"]["spec"]["containers"][0]["args"] and d
    deployment = await eventually(rolled_out, what="the Deployment to carry sessionsPerPod=40")
    assert "scheduler.max_batch_size=24" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment["spec"]["replicas"] == 3
    await eventually(lambda: c.get(VOICES, name)["status"].get("observedGeneration") == 2, what="observedGeneration=2")
    assert c.creates(JOBS) == 2  # one build per engine hash
    await c.make_pods_available(name)

    # Restart the operator: it resumes the voice, and nothing is created again or duplicated.
    counts = {r: len(c.objects(r)) for r in [JOBS, *SERVING]}
    job_posts = c.creates(JOBS)
    operator = await start_operator()
    await eventually(lambda: "Resuming is processed: 1 succeeded" in operator.logs(), what="the voice to be resumed")
    assert {r: len(c.objects(r)) for r in [JOBS, *SERVING]} == counts
    assert c.creates(JOBS) == job_posts  # the Job is looked up first, never posted twice
    assert c.get(DEPLOYMENTS, name)["spec"]["replicas"] == 3
    await eventually(lambda: (c.condition(name, "Ready") or {}).get("status") == "True", what="Ready=True after resume")


async def test_over_budget_voice_is_refused_with_the_numbers_and_gets_no_children(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    voice["metadata"]["name"] = "too-many"
    voice["spec"].update(sessionsPerPod=128, maxBatchSize=32, contextTokens=8192)
    fp8_on_a10g = load_example("voice-rtx4090-conversational.yaml")
    fp8_on_a10g["metadata"]["name"] = "no-fp8"
    fp8_on_a10g["spec"]["gpuProfile"] = "a10g"
    await start_operator()
    await c.create_voice(voice, "uid-too-many")
    await c.create_voice(fp8_on_a10g, "uid-no-fp8")

    ready = await eventually(lambda: c.condition("too-many", "Ready"), what="Ready on the over-budget voice")
    assert (ready["status"], ready["reason"]) == ("False", "InsufficientGPUMemory")
    assert "128 sessions x 8192 tokens need 112.0 GiB of KV cache" in ready["message"]
    assert "at most 19 sessions fit" in ready["message"]
    assert c.get(VOICES, "too-many")["status"]["maxSessionsPerPod"] == 19

    ready = await eventually(lambda: c.condition("no-fp8", "Ready"), what="Ready on the FP8-on-A10G voice")
    assert (ready["status"], ready["reason"]) == ("False", "PrecisionUnsupported")
    assert "a10g (sm_86) has no FP8" in ready["message"]

    assert c.objects(JOBS) == {}
    assert all(c.objects(resource) == {} for resource in SERVING)


async def test_voices_sharing_a_model_share_one_build_job(mock_cluster, start_operator):
    c = mock_cluster
    first = load_example("voice-rtx4090-conversational.yaml")
    second = load_example("voice-rtx4090-conversational.yaml")
    second["metadata"]["name"] = "leo-chat"
    second["spec"].update(voice="leo", gpuProfile="l4")  # L4 is sm_89 too; same slot budget, so the same buckets
    job_name = job_name_for(first)
    assert job_name_for(second) == job_name

    await start_operator()
    await c.create_voice(first, "uid-first")
    await c.create_voice(second, "uid-second")
    await eventually(lambda: len((c.get(JOBS, job_name) or {}).get("metadata", {}).get("ownerReferences", [])) == 2,
                     what="both voices to own the shared Job")
    await c.complete_job(job_name)
    await eventually(lambda: c.get(DEPLOYMENTS, "tara-chat") and c.get(DEPLOYMENTS, "leo-chat"), what="both Deployments")
    # Both voices may race to create it; the API answers the loser 409, and it joins as an owner.
    assert list(c.objects(JOBS)) == [job_name]
    owners = {ref["name"] for ref in c.get(JOBS, job_name)["metadata"]["ownerReferences"]}
    assert owners == {"tara-chat", "leo-chat"}


async def test_failed_build_is_reported_and_retried(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-h100-longform.yaml")
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    await start_operator(build_retry_base_s="3", build_retry_max_s="3")  # time to see the failure
    await c.create_voice(voice, "uid-longform")
    await eventually(lambda: c.get(JOBS, job_name), what="the build Job")

    await c.fail_job(job_name)
    failed = await eventually(lambda: (c.condition(name, "EngineReady") or {}).get("reason") == "EngineBuildFailed"
                              and c.condition(name, "EngineReady"), what="EngineReady=False/EngineBuildFailed")
    assert "BackoffLimitExceeded" in failed["message"] and "build attempt 2 at" in failed["message"]
    assert c.condition(name, "Ready")["reason"] == "EngineBuildFailed"

    assert c.get(VOICES, name)["status"]["engineBuildFailures"] == 1
    assert c.creates(JOBS) == 1  # the failed Job waits out its backoff (3 s here) in place

    # After the backoff it is deleted and created again, as attempt 2; this time it succeeds.
    await eventually(lambda: (c.get(JOBS, job_name) or {}).get("metadata", {}).get("annotations", {})
                     .get("tts.orpheus.io/build-attempt") == "2", what="the second build Job")
    await c.complete_job(job_name)
    await eventually(lambda: c.get(DEPLOYMENTS, name), what="the Deployment")
    assert c.creates(JOBS) == 2


async def test_turning_autoscaling_off_removes_the_hpa_and_sets_replicas(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    name = voice["metadata"]["name"]
    await start_operator()
    await c.create_voice(voice, VOICE_UID)
    await eventually(lambda: c.get(JOBS, job_name_for(voice)), what="the build Job")
    await c.complete_job(job_name_for(voice))
    hpa = "autoscaling/v2/horizontalpodautoscalers"
    await eventually(lambda: c.get(hpa, name), what="the HPA")

    await c.patch_voice(name, {"metadata": {"generation": 2}, "spec": {"replicas": 2, "autoscaling": {"enabled": False}}})
    await eventually(lambda: c.get(hpa, name) is None, what="the HPA to be deleted")
    assert c.get(DEPLOYMENTS, name)["spec"]["replicas"] == 2

    # Deleting the voice: the operator releases kopf's finalizer and the voice goes (its children
    # would follow through their owner references; kmock has no garbage collector).
    await c.request("DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}")
    await eventually(lambda: c.get(VOICES, name) is None, what="the voice to be deleted")


async def test_operator_killed_while_the_engine_builds_finishes_the_rollout_after_restart(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-h100-longform.yaml")
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    operator = await start_operator()
    await c.create_voice(voice, "uid-killed")
    await eventually(lambda: c.get(JOBS, job_name), what="the build Job")
    operator.kill()

    await c.complete_job(job_name)
    await start_operator()
    for resource in SERVING:
        await eventually(lambda r=resource: c.get(r, name), what=SERVING[resource])
    assert list(c.objects(JOBS)) == [job_name] and c.creates(JOBS) == 1
    assert c.get(DEPLOYMENTS, name)["spec"]["replicas"] == 2  # minReplicas


async def test_operator_restarted_while_the_build_job_runs_resumes_it_without_a_second_job(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    await start_operator()
    await c.create_voice(voice, "uid-restarted")
    await eventually(lambda: c.get(JOBS, job_name), what="the build Job")
    await eventually(lambda: (c.condition(name, "EngineReady") or {}).get("reason") == "EngineBuilding",
                     what="EngineReady=False/EngineBuilding")

    operator = await start_operator()  # a graceful stop (SIGINT), then a new process; the Job still runs

    def since_restart() -> str:
        return operator.logs().rpartition("Starting Kopf")[2]
    await eventually(lambda: since_restart().count("Handler 'rollout' failed temporarily") >= 2,
                     what="the new process to look at the running build twice")
    assert list(c.objects(JOBS)) == [job_name] and c.creates(JOBS) == 1  # found, never posted again
    assert c.objects(DEPLOYMENTS) == {}

    await c.complete_job(job_name)
    for resource in SERVING:
        await eventually(lambda r=resource: c.get(r, name), what=SERVING[resource])
    await eventually(lambda: (c.condition(name, "EngineReady") or {}).get("status") == "True", what="EngineReady=True")
    assert c.creates(JOBS) == 1
