"""The real operator against kmock: a voice with LoRA adapters rolls out pods that mount and fetch
them, reports them in status, builds the engine for their pool, and takes another adapter that fits
the pool's places without a second build."""

from __future__ import annotations

from operator_testkit import DEPLOYMENTS, JOBS, VOICES, eventually, job_name_for, load_example

WARM = {"name": "tara-warm", "pvc": {"claimName": "voice-adapters", "path": "tara/warm"}, "voices": ["warm"]}
BOB = {"name": "bob", "hub": {"repo": "acme/orpheus-bob-lora", "revision": "0123abcd"}}
ALICE = {"name": "alice", "pvc": {"claimName": "voice-adapters", "path": "alice"}}
DAN = {"name": "dan", "pvc": {"claimName": "voice-adapters", "path": "dan"}}


async def test_voice_with_adapters_rolls_out_their_mounts_and_flags_and_reports_them(mock_cluster, start_operator):
    c = mock_cluster
    voice = load_example("voice-rtx4090-conversational.yaml")
    voice["spec"]["adapters"] = [WARM, BOB, ALICE]  # three adapters: a pool of four places
    name = voice["metadata"]["name"]
    job_name = job_name_for(voice)
    assert job_name != job_name_for(load_example("voice-rtx4090-conversational.yaml"))  # the pool is compiled in
    await start_operator()
    await c.create_voice(voice, "uid-adapters")

    def states() -> dict[str, str]:
        return {a["name"]: a["state"] for a in (c.get(VOICES, name) or {}).get("status", {}).get("adapters") or []}

    await eventually(lambda: c.get(JOBS, job_name), what="the build Job")
    await eventually(lambda: states() == {"tara-warm": "Pending", "bob": "Pending", "alice": "Pending"},
                     what="adapters Pending while it builds")
    job_args = c.get(JOBS, job_name)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "adapters.max_resident=4" in job_args and "adapters.voices" not in " ".join(job_args)

    await c.complete_job(job_name)
    deployment = await eventually(lambda: c.get(DEPLOYMENTS, name), what="the Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "adapters.dir=/var/lib/orpheus-tts/adapters" in server["args"]
    assert "adapters.max_resident=4" in server["args"] and 'adapters.voices=["warm:tara-warm"]' in server["args"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/var/lib/orpheus-tts/adapters/tara-warm"]["subPath"] == "tara/warm"
    assert mounts["/var/lib/orpheus-tts/adapters/bob"]["readOnly"] is True
    assert pod["initContainers"][0]["args"] == ["/var/lib/orpheus-tts/adapters", "bob", "acme/orpheus-bob-lora", "0123abcd"]
    await eventually(lambda: states() == {"tara-warm": "RollingOut", "bob": "RollingOut", "alice": "RollingOut"},
                     what="adapters RollingOut")

    await c.make_pods_available(name)
    await eventually(lambda: states() == {"tara-warm": "Mounted", "bob": "Fetched", "alice": "Mounted"},
                     what="adapters Mounted and Fetched")

    # A fourth adapter fits the four places: the pods roll with its mount; the engine is the same, so no build.
    await c.patch_voice(name, {"metadata": {"generation": 2}, "spec": {"adapters": [WARM, BOB, ALICE, DAN]}})

    def rolled() -> bool:
        mounts = c.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        return any(m["mountPath"] == "/var/lib/orpheus-tts/adapters/dan" for m in mounts)
    await eventually(rolled, what="the Deployment to mount dan")
    await eventually(lambda: "dan" in states(), what="dan in status")
    assert list(c.objects(JOBS)) == [job_name] and c.creates(JOBS) == 1
