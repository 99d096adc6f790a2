"""The operator's defaults for voices (server and builder images, GPU profile, engine cache claim)
from its environment."""

from __future__ import annotations

import jsonschema
import pytest
from operator_testkit import load_example
from test_operator_reconcile import SETTINGS, FakeCluster

from orpheus_operator import reconcile
from orpheus_operator.crd import apply_defaults, voice_schema
from orpheus_operator.hashing import engine_hash
from orpheus_operator.plan import plan, render
from orpheus_operator.profiles import GPU_PROFILES
from orpheus_operator.settings import (DEFAULT_BUILDER_IMAGE, DEFAULT_CACHE_CLAIM, DEFAULT_IMAGE, ENV_PREFIX,
                                       OperatorSettings)
from orpheus_operator.voice import Voice, refusal

# What the Helm chart's operator Deployment sets (templates/deployment.yaml).
CHART_ENV = {
    f"{ENV_PREFIX}ENGINE_POLL_S": "15",
    f"{ENV_PREFIX}STATUS_INTERVAL_S": "30",
    f"{ENV_PREFIX}BUILD_RETRY_BASE_S": "30",
    f"{ENV_PREFIX}BUILD_RETRY_MAX_S": "900",
    f"{ENV_PREFIX}DEFAULT_IMAGE": "registry.example/orpheus-tts:0.2.0",
    f"{ENV_PREFIX}DEFAULT_BUILDER_IMAGE": "registry.example/orpheus-tts-builder:0.2.0",
    f"{ENV_PREFIX}DEFAULT_GPU_PROFILE": "l4",
    f"{ENV_PREFIX}ENGINE_CACHE_CLAIM": "engines",
    f"{ENV_PREFIX}ENGINE_CACHE_STORAGE_CLASS": "fast",  # the chart's: it creates the PVC, not the operator
    f"{ENV_PREFIX}ENGINE_CACHE_SIZE": "100Gi",
}


def bare_voice() -> dict:
    """A voice that names no image, builder image, GPU profile or cache claim: the defaults decide them."""
    body = load_example("voice-rtx4090-conversational.yaml")
    body["metadata"].update(namespace="voices", uid="uid-1", generation=1)
    for key in ("image", "builderImage", "gpuProfile", "engineCache"):
        body["spec"].pop(key, None)
    body["spec"].update(precision="bf16", sessionsPerPod=16, maxBatchSize=16)  # fits an L4 and an H100
    return body


def claims(obj: dict) -> list[str]:
    pod = obj["spec"]["template"]["spec"]
    return [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]


def test_from_env_reads_the_variables_the_chart_sets():
    settings = OperatorSettings.from_env(CHART_ENV)
    assert (settings.default_image, settings.default_builder_image, settings.default_gpu_profile,
            settings.engine_cache_claim) == (
        "registry.example/orpheus-tts:0.2.0", "registry.example/orpheus-tts-builder:0.2.0", "l4", "engines")
    assert settings.engine_poll_s == 15.0 and settings.build_retry_max_s == 900.0

    job, dep = render(bare_voice(), settings)[:2]
    assert (job["kind"], dep["kind"]) == ("Job", "Deployment")
    # The build Job runs the builder image (it has the compiler), the pods the server image.
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/orpheus-tts-builder:0.2.0"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/orpheus-tts:0.2.0"
    assert claims(job) == ["engines"] and claims(dep) == ["engines"]
    assert dep["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == GPU_PROFILES["l4"].product_label


def test_empty_or_missing_variables_keep_the_built_in_defaults():
    empty = {f"{ENV_PREFIX}DEFAULT_IMAGE": "", f"{ENV_PREFIX}DEFAULT_BUILDER_IMAGE": "",
             f"{ENV_PREFIX}DEFAULT_GPU_PROFILE": "", f"{ENV_PREFIX}ENGINE_CACHE_CLAIM": " "}
    for env in ({}, empty):
        settings = OperatorSettings.from_env(env)
        assert settings == OperatorSettings()
        assert (settings.default_image, settings.default_builder_image, settings.default_gpu_profile,
                settings.engine_cache_claim) == (DEFAULT_IMAGE, DEFAULT_BUILDER_IMAGE, "", DEFAULT_CACHE_CLAIM)
    assert (DEFAULT_IMAGE, DEFAULT_BUILDER_IMAGE, DEFAULT_CACHE_CLAIM) == (
        "orpheus-tts:0.1.0", "orpheus-tts-builder:0.1.0", "orpheus-engine-cache")


def test_an_unknown_default_gpu_profile_is_a_configuration_error():
    with pytest.raises(ValueError, match="DEFAULT_GPU_PROFILE must be empty or one of .*got 'rtx-3090'"):
        OperatorSettings.from_env({f"{ENV_PREFIX}DEFAULT_GPU_PROFILE": "rtx-3090"})


def test_what_the_voice_names_wins_over_the_defaults():
    settings = OperatorSettings(default_image="other:1", default_builder_image="other-builder:1",
                                default_gpu_profile="l4", engine_cache_claim="engines")
    body = bare_voice()
    body["spec"].update(image="mine:2", builderImage="my-builder:2", gpuProfile="h100-80gb",
                        engineCache={"claimName": "my-cache"})
    jsonschema.Draft4Validator(voice_schema()).validate(body)
    voice = Voice.from_body(body, settings)
    assert (voice.image, voice.builder_image, voice.gpu_profile, voice.cache_claim) == (
        "mine:2", "my-builder:2", "h100-80gb", "my-cache")
    job, dep = render(body, settings)[:2]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "my-builder:2"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:2"

    defaulted = Voice.from_body(bare_voice(), settings)
    assert (defaulted.image, defaulted.builder_image, defaulted.gpu_profile, defaulted.cache_claim) == (
        "other:1", "other-builder:1", "l4", "engines")


def test_without_settings_the_built_in_defaults_apply_as_before():
    voice = Voice.from_body(bare_voice())
    assert (voice.image, voice.builder_image, voice.cache_claim, voice.gpu_profile) == (
        DEFAULT_IMAGE, DEFAULT_BUILDER_IMAGE, DEFAULT_CACHE_CLAIM, None)


def test_the_engine_hash_leaves_the_images_out_like_before():
    """Neither image reference enters the hash (hashing.py says why): naming another server or
    builder image, or a default one, keeps the voice's engine and its build Job."""
    settings = OperatorSettings(default_gpu_profile="l4")
    named = bare_voice()
    named["spec"].update(image="mine:2", builderImage="my-builder:2")
    defaulted = Voice.from_body(bare_voice(), settings)
    assert engine_hash(Voice.from_body(named, settings)) == engine_hash(defaulted)
    other_defaults = OperatorSettings(default_gpu_profile="l4", default_image="x:1", default_builder_image="y:1")
    assert engine_hash(Voice.from_body(bare_voice(), other_defaults)) == engine_hash(defaulted)


def test_the_engine_hash_is_the_same_for_a_default_and_a_named_gpu_profile():
    named = bare_voice()
    named["spec"]["gpuProfile"] = "l4"
    defaulted = Voice.from_body(bare_voice(), OperatorSettings(default_gpu_profile="l4"))
    assert engine_hash(defaulted) == engine_hash(Voice.from_body(named))
    assert engine_hash(defaulted) == engine_hash(Voice.from_body(bare_voice(), OperatorSettings(default_gpu_profile="rtx-4090")))
    assert engine_hash(defaulted) != engine_hash(Voice.from_body(bare_voice(), OperatorSettings(default_gpu_profile="h200")))


def test_the_schema_accepts_a_voice_without_gpu_profile_images_or_claim_and_fills_none_in():
    body = bare_voice()
    jsonschema.Draft4Validator(voice_schema()).validate(body)
    spec = apply_defaults(body)["spec"]
    assert "gpuProfile" not in spec and "image" not in spec and "builderImage" not in spec
    assert "claimName" not in spec["engineCache"]


def test_no_gpu_profile_and_no_default_is_refused_with_a_reason():
    p = plan(bare_voice(), OperatorSettings())
    assert p.refusal is not None and p.refusal.reason == "NoGPUProfile"
    assert "spec.gpuProfile is not set" in p.refusal.message and "DEFAULT_GPU_PROFILE" in p.refusal.message
    assert "h100-80gb" in p.refusal.message  # says what to set
    assert (p.engine_hash, p.job, p.job_name) == (None, None, None)
    with pytest.raises(ValueError, match="NoGPUProfile"):
        render(bare_voice())


def test_a_gpu_profile_outside_the_table_is_refused_not_a_crash():
    body = bare_voice()
    body["spec"]["gpuProfile"] = "rtx-3090"  # a file given to `render` passed no API server
    p = plan(body)
    assert p.refusal.reason == "UnknownGPUProfile" and p.engine_hash is None
    assert refusal(Voice.from_body(body)).message.startswith("GPU profile 'rtx-3090' is not one of")


def test_rollout_of_a_voice_without_gpu_profile_sets_ready_false_and_creates_nothing():
    cluster = FakeCluster()
    out = reconcile.rollout(bare_voice(), cluster, {}, SETTINGS)
    assert cluster.objects == {} and all(c.startswith("get") for c in cluster.calls)
    assert out.retry_in_s is None
    conditions = {c["type"]: c for c in out.status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "NoGPUProfile")
    assert conditions["EngineReady"]["reason"] == "SpecRefused"
    # No engine and no budget to report; None also clears what an earlier spec left in status.
    assert {k: out.status[k] for k in ("engineHash", "engineJob", "gpuProfile", "maxSessionsPerPod")} == dict.fromkeys(
        ("engineHash", "engineJob", "gpuProfile", "maxSessionsPerPod"))
    assert reconcile.changed_fields({}, out.status).keys().isdisjoint({"engineHash", "engineJob", "maxSessionsPerPod"})
    earlier = {"engineHash": "abc", "engineJob": "orpheus-engine-abc", "gpuProfile": "l4", "maxSessionsPerPod": 30}
    assert {k: v for k, v in reconcile.changed_fields(earlier, out.status).items() if k in earlier} == dict.fromkeys(earlier)

    observed = reconcile.observe(bare_voice(), cluster, out.status, SETTINGS)
    assert {c["type"]: c["reason"] for c in observed["conditions"]}["Ready"] == "NoGPUProfile"


def test_rollout_with_a_default_gpu_profile_builds_with_it_and_reports_it():
    cluster = FakeCluster()
    settings = OperatorSettings(engine_poll_s=1, default_gpu_profile="l4", engine_cache_claim="engines")
    out = reconcile.rollout(bare_voice(), cluster, {}, settings)
    (job,) = [o for (kind, _, _), o in cluster.objects.items() if kind == "Job"]
    assert "--gpu-arch" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert claims(job) == ["engines"]
    assert out.status["gpuProfile"] == "l4" and out.status["engineJob"] == job["metadata"]["name"]
    assert out.status["maxSessionsPerPod"] == Voice.from_body(bare_voice(), settings).budget.max_sessions
