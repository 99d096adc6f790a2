"""The real operator against kmock: a voice with LoRA adapters rolls out pods that mount and fetch
them, reports them in status, and takes a new adapter without a second engine build."""

from __future__ import annotations

from operator_testkit import DEPLOYMENTS, JOBS, VOICES, eventually, job_name_for, load_example

WARM = {"name": "tara-warm", "pvc": {"claimName": "voice-adapters", "path": "tara/warm"}, "voices": ["warm"]}
BOB = {"name": "bob", "hub": {"repo": "acme/orpheus-bob-lora", "revision": "0123abcd"}}
ALICE = {"name": "alice", "pvc": {"claimName": "voice-adapters", "path": "alice"}}


async def test_voice_with_adapters_rolls_out_their_mounts_and_flags_and_reports_them(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    voice["spec"]["adapters"] = [WARM, BOB]
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    assert job_name == job_name_for(load_example("voice-rtx4090-conversational.yaml"))  # the same engine as without
    await start_operator()
    await c.create_voice(voice, "uid-adapters")

    def states() -> dict[str, str]:
        return {a["name"]: a["state"] for a in (c.get(VOICES, name) or {}).get("status", {}).get("adapters") or []}

    await eventually(lambda: c.get(JOBS, job_name), what="the build Job")
    await eventually(lambda: states() == {"tara-warm": "Pending", "bob": "Pending"}, what="adapters Pending while it builds")
    assert "adapter" not in " ".join(c.get(JOBS, job_name)["spec"]["template"]["spec"]["containers"][0]["args"])

    await c.complete_job(job_name)
    deployment = await eventually(lambda: c.get(DEPLOYMENTS, name), what="the Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "adapters.dir=/var/lib/orpheus-tts/adapters" in server["args"]
    assert "adapters.max_resident=2" in server["args"] and 'adapters.voices=["warm:tara-warm"]' in server["args"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/var/lib/orpheus-tts/adapters/tara-warm"]["subPath"] == "tara/warm"
    assert mounts["/var/lib/orpheus-tts/adapters/bob"]["readOnly"] is True
    assert pod["initContainers"][0]["args"] == ["/var/lib/orpheus-tts/adapters", "bob", "acme/orpheus-bob-lora", "0123abcd"]
    await eventually(lambda: states() == {"tara-warm": "RollingOut", "bob": "RollingOut"}, what="adapters RollingOut")

    await c.make_pods_available(name)
    await eventually(lambda: states() == {"tara-warm": "Mounted", "bob": "Fetched"}, what="adapters Mounted and Fetched")

    # Another adapter: the pods roll with its mount; the engine is the same, so no build.
    await c.patch_voice(name, {"metadata": {"generation": 2}, "spec": {"adapters": [WARM, BOB, ALICE]}})

    def rolled() -> bool:
        mounts = c.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        return any(m["mountPath"] == "/var/lib/orpheus-tts/adapters/alice" for m in mounts)
    await eventually(rolled, what="the Deployment to mount alice")
    await eventually(lambda: "alice" in states(), what="alice in status")
    assert list(c.objects(JOBS)) == [job_name] and c.creates(JOBS) == 1
