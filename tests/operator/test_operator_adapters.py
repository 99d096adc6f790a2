"""A voice's LoRA adapters: their memory in the slot budget, PVC adapters mounted and hub adapters
fetched into the pods, the server's settings, status, and of it only the pool in the engine."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
from operator_testkit import REPO_ROOT, voice_body

from orpheus_operator import status as st
from orpheus_operator.crd import voice_schema
from orpheus_operator.engine_job import build_args
from orpheus_operator.hashing import engine_hash
from orpheus_operator.lora_adapters import ADAPTERS_MOUNT, FETCH_COMMAND, FETCH_CONTAINER
from orpheus_operator.plan import render
from orpheus_operator.profiles import GPU_PROFILES, ORPHEUS_3B, slot_budget
from orpheus_operator.serving import pod_template, server_args
from orpheus_operator.settings import OperatorSettings
from orpheus_operator.voice import Voice, refusal

KUBERNETES_VERSION = "1.31"
WARM = {"name": "tara-warm", "pvc": {"claimName": "voice-adapters", "path": "tara/warm/"}, "voices": ["warm"]}
BOB = {"name": "bob.v2", "hub": {"repo": "acme/orpheus-bob-lora", "revision": "0123abcd"}, "voices": ["bob", "robert"]}
ALICE = {"name": "alice", "pvc": {"claimName": "voice-adapters", "path": "alice"}}
# voice_body(): the rtx-4090 conversational example, fp8, 2048 tokens, 48 sessions


def voice(settings: OperatorSettings | None = None, **spec) -> Voice:
    return Voice.from_body(voice_body(**spec), settings)


def pod(v: Voice) -> dict:
    return pod_template(v, engine_hash(v))


def adapter_sets(v: Voice) -> dict[str, str]:
    args = server_args(v)
    sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    return {k: val for k, val in sets.items() if k.startswith("adapters.")}


def test_an_adapter_place_holds_a_and_b_of_every_projection_at_the_largest_rank():
    per_rank_a = 3 * 3072 + 3072 + 2 * 3072 + 8192  # q, k, v in; o in; gate, up in; down in
    per_rank_b = 3072 + 1024 + 1024 + 3072 + 2 * 8192 + 3072  # q, k, v out; o out; gate, up out; down out
    assert (per_rank_a, per_rank_b) == (26_624, 27_648)
    assert ORPHEUS_3B.lora_place_bytes(64) == 28 * 64 * (per_rank_a + per_rank_b) * 2 == 194_510_848
    assert ORPHEUS_3B.lora_place_bytes(16) * 4 == ORPHEUS_3B.lora_place_bytes(64)


def test_the_place_size_is_what_the_servers_pool_allocates():
    torch = pytest.importorskip("torch")
    lora = pytest.importorskip("orpheus_tts.model.lora")
    from orpheus_tts.model.llama import ModelArgs

    args = ModelArgs.from_name("orpheus-3b")
    pool = lora.LoraPool(args, capacity=3, max_rank=64, device=torch.device("meta"), dtype=torch.bfloat16)
    assert pool.nbytes == 3 * ORPHEUS_3B.lora_place_bytes(64)


def test_adapter_places_are_taken_from_the_kv_slots():
    gpu = GPU_PROFILES["rtx-4090"]  # 24,564 MiB
    plain = slot_budget(gpu, "fp8", 2048)
    with_lora = slot_budget(gpu, "fp8", 2048, lora_places=8, lora_rank=64)
    assert with_lora.lora_bytes == 8 * 194_510_848 == 1_556_086_784
    assert with_lora.kv_budget_bytes == plain.kv_budget_bytes - 1_556_086_784
    per_session = 2048 * 114_688  # 224 MiB of KV cache
    assert with_lora.max_sessions == with_lora.kv_budget_bytes // per_session == 70
    assert plain.max_sessions == 76  # 1.45 GiB of adapters cost 6 sessions


def test_a_voice_gets_no_more_places_than_it_has_adapters_and_none_without():
    assert voice().budget.lora_bytes == 0 and voice().adapters.places == 0
    two = voice(adapters=[WARM, BOB])
    assert two.adapters.places == 2 and two.budget.lora_bytes == 2 * ORPHEUS_3B.lora_place_bytes(64)
    assert adapter_sets(two)["adapters.max_resident"] == "2"
    capped = voice(adapters=[WARM, BOB, ALICE], adapterSlots={"maxResident": 2, "maxRank": 16})
    assert capped.budget.lora_places == 2 and capped.budget.lora_rank == 16
    assert capped.budget.lora_bytes == 2 * ORPHEUS_3B.lora_place_bytes(16)


def test_over_budget_with_adapters_is_refused_with_the_adapters_in_the_numbers():
    many = [{"name": f"v{i}", "pvc": {"claimName": "a", "path": f"v{i}"}} for i in range(8)]
    r = refusal(voice(sessionsPerPod=76, adapters=many))
    assert r is not None and r.reason == "InsufficientGPUMemory"
    assert r.message == (
        "76 sessions x 2048 tokens need 16.6 GiB of KV cache; rtx-4090 has 24.0 GiB, of which 3.5 GiB go to fp8 "
        "weights, 1.4 GiB to 8 LoRA adapter places of rank 64 and 3.7 GiB to SNAC and workspace, leaving 15.3 GiB: "
        "at most 70 sessions fit"
    )
    assert refusal(voice(sessionsPerPod=70, maxBatchSize=32, adapters=many)) is None
    assert refusal(voice(sessionsPerPod=76)) is None


def test_pvc_adapter_is_mounted_read_only_at_its_name_from_its_directory():
    spec = pod(voice(adapters=[WARM, ALICE]))["spec"]
    assert "initContainers" not in spec  # nothing to fetch
    (volume,) = [v for v in spec["volumes"] if v["name"].startswith("adapter")]  # one claim, one volume
    assert volume == {"name": "adapter-claim-0", "persistentVolumeClaim": {"claimName": "voice-adapters", "readOnly": True}}
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "adapter-claim-0"]
    assert mounts == [
        {"name": "adapter-claim-0", "mountPath": f"{ADAPTERS_MOUNT}/tara-warm", "readOnly": True, "subPath": "tara/warm"},
        {"name": "adapter-claim-0", "mountPath": f"{ADAPTERS_MOUNT}/alice", "readOnly": True, "subPath": "alice"},
    ]


def test_hub_adapter_is_fetched_by_an_init_container_into_the_directory_the_server_reads():
    v = voice(adapters=[WARM, BOB])
    spec = pod(v)["spec"]
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == FETCH_CONTAINER and fetch["image"] == v.image  # the server image holds engine_jobs
    assert fetch["command"] == list(FETCH_COMMAND)
    assert fetch["args"] == [ADAPTERS_MOUNT, "bob.v2", "acme/orpheus-bob-lora", "0123abcd"]  # the PVC one is not fetched
    (written,) = [m for m in fetch["volumeMounts"] if m["name"] != "tmp"]
    (read,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == written["name"]]
    assert written == {"name": "adapter-1", "mountPath": f"{ADAPTERS_MOUNT}/bob.v2"}
    assert read == {**written, "readOnly": True}
    assert {"name": "adapter-1", "emptyDir": {}} in spec["volumes"]


def test_fetch_command_stops_with_the_builders_message_naming_the_adapter_without_a_hub(tmp_path):
    """The init container's own command, run here with the hub out of reach."""
    (fetch,) = pod(voice(adapters=[BOB]))["spec"]["initContainers"]
    args = [str(tmp_path), *fetch["args"][1:]]
    env = {"PATH": "", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *fetch["command"][1:], *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "adapter bob.v2: could not download acme/orpheus-bob-lora@0123abcd: ")


def test_server_gets_the_directory_the_pool_and_the_voices():
    assert adapter_sets(voice()) == {}
    assert adapter_sets(voice(adapters=[WARM, BOB], adapterSlots={"maxRank": 32})) == {
        "adapters.dir": ADAPTERS_MOUNT,
        "adapters.max_resident": "2",
        "adapters.max_rank": "32",
        "adapters.voices": '["warm:tara-warm", "bob:bob.v2", "robert:bob.v2"]',
    }
    assert "adapters.voices" not in adapter_sets(voice(adapters=[ALICE]))


def test_server_accepts_the_adapter_settings_the_operator_passes():
    config = pytest.importorskip("orpheus_tts.config")
    sets = [f"{k}={v}" for k, v in adapter_sets(voice(adapters=[WARM, BOB], adapterSlots={"maxRank": 32})).items()]
    loaded = config.load_config(overrides=config.parse_set_flags(sets), environ={}).adapters
    assert (loaded.dir, loaded.max_resident, loaded.max_rank) == (ADAPTERS_MOUNT, 2, 32)
    assert loaded.voices == ["warm:tara-warm", "bob:bob.v2", "robert:bob.v2"]


def test_the_engine_is_built_for_the_adapter_pool_not_for_the_adapters():
    """The pool (places, rank) is captured in the decode graphs: an engine of its own, built with it.
    The adapters are not: another adapter within the same places rolls the pods on the same engine."""
    plain = voice()
    two = voice(adapters=[WARM, BOB], adapterSlots={"maxRank": 128})
    two_others = voice(adapters=[WARM, ALICE], adapterSlots={"maxRank": 128})
    three = voice(adapters=[WARM, BOB, ALICE], adapterSlots={"maxRank": 128})
    four = voice(adapters=[WARM, BOB, ALICE, {**ALICE, "name": "dan"}], adapterSlots={"maxRank": 128})
    assert [v.adapters.places for v in (plain, two, three, four)] == [0, 2, 4, 4]
    assert len({engine_hash(plain), engine_hash(two), engine_hash(three)}) == 3
    assert engine_hash(two) == engine_hash(two_others) and engine_hash(three) == engine_hash(four)
    assert pod(three) != pod(four)
    job = " ".join(build_args(three, engine_hash(three)))
    assert f"adapters.dir={ADAPTERS_MOUNT}" in job and "adapters.max_resident=4" in job
    assert "adapters.max_rank=128" in job and "adapters.voices" not in job
    assert voice(adapters=[WARM, BOB, ALICE], adapterSlots={"maxResident": 3}).adapters.places == 3


def test_adapter_slots_come_from_the_operator_under_the_voice_key_by_key():
    settings = OperatorSettings.from_env({"ORPHEUS_OPERATOR_DEFAULT_ADAPTER_SLOTS": '{"maxResident": 4, "maxRank": 32}'})
    inherited = voice(settings, adapters=[WARM])
    assert (inherited.adapters.max_resident, inherited.adapters.max_rank) == (4, 32)
    own = voice(settings, adapters=[WARM], adapterSlots={"maxRank": 8})
    assert (own.adapters.max_resident, own.adapters.max_rank) == (4, 8)
    assert (voice(adapters=[WARM]).adapters.max_resident, voice(adapters=[WARM]).adapters.max_rank) == (8, 64)
    with pytest.raises(ValueError, match="DEFAULT_ADAPTER_SLOTS must be a JSON object"):
        OperatorSettings.from_env({"ORPHEUS_OPERATOR_DEFAULT_ADAPTER_SLOTS": "8"})


@pytest.mark.parametrize("adapters, words", [
    ([WARM, {**ALICE, "name": "tara-warm"}], "tara-warm named more than once"),
    ([WARM, {**ALICE, "voices": ["warm"]}], "voice 'warm' is mapped to both tara-warm and alice"),
    ([{**ALICE, "pvc": {"claimName": "a", "path": "x/../../etc"}}], "leaves its claim"),
])
def test_ambiguous_or_escaping_adapters_are_refused(adapters, words):
    body = voice_body(adapters=adapters)
    jsonschema.Draft4Validator(voice_schema()).validate(body)  # the list-map and subPath rules are not jsonschema's
    r = refusal(Voice.from_body(body))
    assert r is not None and r.reason == "InvalidSpec" and words in r.message


def test_manifests_with_adapters_pass_strict_kubernetes_validation():
    for obj in render(voice_body(adapters=[WARM, BOB, ALICE])):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _deployment(v: Voice, **status) -> dict:
    return {"metadata": {"generation": 2}, "spec": {"replicas": 2, "template": pod(v)}, "status": status}


def test_status_says_which_adapters_every_pod_has():
    v = voice(adapters=[WARM, BOB])

    def states(deployment):
        live = st.template_annotation(deployment, "tts.orpheus.io/adapters")
        return [e["state"] for e in v.adapters.status(live, st.rolled_out(deployment))]

    assert states(None) == ["Pending", "Pending"]
    assert states(_deployment(voice(adapters=[WARM]), observedGeneration=2, replicas=2, updatedReplicas=2,
                              availableReplicas=2)) == ["Mounted", "Pending"]  # the old template lacks bob.v2
    rolling = _deployment(v, observedGeneration=2, replicas=3, updatedReplicas=1, availableReplicas=2)
    assert states(rolling) == ["RollingOut", "RollingOut"]
    assert states(_deployment(v, observedGeneration=1, replicas=2, updatedReplicas=2, availableReplicas=2)) == [
        "RollingOut", "RollingOut"]  # the controller has not seen the new template yet
    done = _deployment(v, observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=2)
    assert states(done) == ["Mounted", "Fetched"]
    assert v.adapters.status(None, False)[1] == {"name": "bob.v2", "source": "hub:acme/orpheus-bob-lora@0123abcd",
                                                 "voices": ["bob", "robert"], "state": "Pending"}
    moved = voice(adapters=[{**WARM, "pvc": {"claimName": "voice-adapters", "path": "tara/warm-2"}}, BOB])
    assert [e["state"] for e in moved.adapters.status(st.template_annotation(done, "tts.orpheus.io/adapters"), True)] == [
        "Pending", "Fetched"]
    assert voice().adapters.status(None, False) is None  # no list: an old one is cleared


def test_status_schema_takes_what_the_operator_writes():
    v = voice(adapters=[WARM, BOB])
    status_schema = voice_schema()["properties"]["status"]["properties"]["adapters"]
    jsonschema.Draft4Validator(status_schema).validate(v.adapters.status(None, False))
    assert json.loads(pod(v)["metadata"]["annotations"]["tts.orpheus.io/adapters"]) == {
        "tara-warm": "pvc:voice-adapters/tara/warm", "bob.v2": "hub:acme/orpheus-bob-lora@0123abcd"}
