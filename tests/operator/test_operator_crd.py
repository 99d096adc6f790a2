"""The CRD: voices valid and invalid against its own schema, defaults."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from operator_testkit import load_example

from orpheus_operator.crd import apply_defaults, crd_manifest, voice_schema
from orpheus_operator.voice import Voice, refusal

EXAMPLES = ["voice-rtx4090-conversational.yaml", "voice-h100-longform.yaml"]


def validate(voice: dict) -> None:
    # Draft 4: a CRD schema is OpenAPI v3.0's, whose exclusiveMinimum is a flag on minimum, as in
    # draft 4 (draft 7 reads it as a number of its own).
    jsonschema.Draft4Validator(voice_schema()).validate(voice)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_voices_are_valid_before_and_after_defaulting(name):
    voice = load_example(name)
    validate(voice)
    validate(apply_defaults(voice))


def _minimal() -> dict:
    return {
        "apiVersion": "tts.orpheus.io/v1alpha1",
        "kind": "OrpheusVoice",
        "metadata": {"name": "v"},
        "spec": {"model": {"hub": {"repo": "canopylabs/orpheus-3b-0.1-ft", "revision": "abc123"}}, "gpuProfile": "l4"},
    }


INVALID = {
    "no model": lambda s: s.pop("model"),
    "both hub and pvc": lambda s: s["model"].update(pvc={"claimName": "m", "path": "x"}),
    "hub without revision": lambda s: s["model"]["hub"].pop("revision"),
    "hub repo without owner": lambda s: s["model"]["hub"].update(repo="orpheus"),
    "absolute pvc path": lambda s: s.update(model={"pvc": {"claimName": "m", "path": "/abs"}}),
    "unknown precision": lambda s: s.update(precision="fp16"),
    "unknown gpu": lambda s: s.update(gpuProfile="rtx-3090"),
    "unknown backend": lambda s: s.update(backend="vllm"),
    "zero sessions": lambda s: s.update(sessionsPerPod=0),
    "tiny context": lambda s: s.update(contextTokens=100),
    "zero max replicas": lambda s: s.update(autoscaling={"maxReplicas": 0}),
    "zero target saturation": lambda s: s.update(autoscaling={"targetSaturation": 0}),
    "negative target saturation": lambda s: s.update(autoscaling={"targetSaturation": -0.5}),
    "target saturation past 1": lambda s: s.update(autoscaling={"targetSaturation": 1.2}),
    "target saturation as a percentage": lambda s: s.update(autoscaling={"targetSaturation": "80%"}),
    "grace period too short": lambda s: s.update(terminationGracePeriodSeconds=1),
    "string sessions": lambda s: s.update(sessionsPerPod="many"),
    "bad toleration effect": lambda s: s.update(tolerations=[{"key": "k", "effect": "Sometimes"}]),
    "empty builder image": lambda s: s.update(builderImage=""),
    "builder image not a string": lambda s: s.update(builderImage=["orpheus-tts-builder:0.1.0"]),
    "origin with a path": lambda s: s.update(security={"allowedOrigins": ["https://app.example.com/"]}),
    "tls without a secret": lambda s: s.update(security={"tls": {"clientAuth": True}}),
    "keys secret not a secret name": lambda s: s.update(security={"apiKeys": {"secretName": "Keys_1"}}),
    "zero requests per second": lambda s: s.update(security={"limits": {"requestsPerSecondPerKey": 0}}),
    "network peer naming nothing": lambda s: s.update(networkPolicy={"clients": [{}]}),
    "unknown selector operator": lambda s: s.update(networkPolicy={"clients": [
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}),
    "adapter without a source": lambda s: s.update(adapters=[{"name": "warm"}]),
    "adapter with both sources": lambda s: s.update(adapters=[{"name": "warm", "pvc": {"claimName": "a", "path": "w"},
                                                               "hub": {"repo": "acme/warm", "revision": "1"}}]),
    "adapter without a name": lambda s: s.update(adapters=[{"pvc": {"claimName": "a", "path": "w"}}]),
    "adapter name with a slash": lambda s: s.update(adapters=[{"name": "a/b", "pvc": {"claimName": "a", "path": "w"}}]),
    "adapter hub without revision": lambda s: s.update(adapters=[{"name": "w", "hub": {"repo": "acme/warm"}}]),
    "adapter voice with a colon": lambda s: s.update(adapters=[{"name": "w", "pvc": {"claimName": "a", "path": "w"},
                                                                "voices": ["warm:w"]}]),
    "zero adapter places": lambda s: s.update(adapterSlots={"maxResident": 0}),
    "adapter rank as text": lambda s: s.update(adapterSlots={"maxRank": "64"}),
}


def test_voice_with_pvc_and_hub_adapters_is_valid_and_gets_no_adapter_defaults():
    voice = _minimal()
    voice["spec"]["adapters"] = [
        {"name": "tara-warm", "pvc": {"claimName": "adapters", "path": "tara/warm"}, "voices": ["warm", "tara-warm"]},
        {"name": "bob.v2", "hub": {"repo": "acme/orpheus-bob-lora", "revision": "0123abcd"}},
    ]
    voice["spec"]["adapterSlots"] = {"maxResident": 2, "maxRank": 16}
    validate(voice)
    spec = apply_defaults(voice)["spec"]
    assert spec["adapters"] == voice["spec"]["adapters"] and spec["adapterSlots"] == {"maxResident": 2, "maxRank": 16}
    assert "adapterSlots" not in apply_defaults(_minimal())["spec"]  # the operator's default, as for security


@pytest.mark.parametrize("voice_name,valid", [("tara", True), ("유나", True), ("ऋतिका", True), ("长乐", True),
                                              ("two words", False), ("a:b", False), ("", False)])
def test_a_default_voice_may_be_named_in_any_script_but_not_with_separators(voice_name, valid):
    voice = _minimal()
    voice["spec"]["voice"] = voice_name
    if valid:
        validate(voice)
    else:
        with pytest.raises(jsonschema.ValidationError):
            validate(voice)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_voices_are_rejected_by_the_schema(case):
    voice = _minimal()
    validate(voice)
    INVALID[case](voice["spec"])
    with pytest.raises(jsonschema.ValidationError):
        validate(voice)


def test_defaults_match_what_the_api_server_would_fill_in():
    spec = apply_defaults(_minimal())["spec"]
    assert spec["precision"] == "bf16" and spec["backend"] == "torch" and spec["voice"] == "tara"
    assert spec["codec"] == {"hub": {"repo": "hubertsiuzdak/snac_24khz", "revision": "main"}}
    assert spec["engineCache"] == {}  # the claim name, like the images and gpuProfile, is the operator's default
    assert "image" not in spec and "builderImage" not in spec and spec["gpuProfile"] == "l4"
    assert spec["autoscaling"] == {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "targetTtfbP95Ms": 250,
                                   "targetSaturation": 0.8}
    assert (spec["sessionsPerPod"], spec["maxBatchSize"], spec["contextTokens"]) == (16, 16, 4096)


@pytest.mark.parametrize("target", [0.05, 0.8, 1, 1.0])
def test_target_saturation_takes_any_fraction_up_to_one_and_reaches_the_voice(target):
    voice = _minimal()
    voice["spec"]["autoscaling"] = {"targetSaturation": target}
    validate(voice)
    assert Voice.from_body(voice).autoscaling.target_saturation == target
    assert Voice.from_body(_minimal()).autoscaling.target_saturation == 0.8  # the CRD default


def test_defaulting_does_not_change_the_input():
    voice = _minimal()
    before = copy.deepcopy(voice)
    apply_defaults(voice)
    assert voice == before


@pytest.mark.parametrize("spec_change, reason", [
    ({"maxBatchSize": 32, "sessionsPerPod": 16}, "InvalidSpec"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "InvalidSpec"),
])
def test_rules_the_schema_leaves_to_cel_are_also_refused_by_the_operator(spec_change, reason):
    """jsonschema cannot run the CRD's CEL rules, and kmock does not: the operator re-checks them."""
    voice = _minimal()
    voice["spec"].update(spec_change)
    validate(voice)
    assert refusal(Voice.from_body(voice)).reason == reason


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    """Every node has a type (or is int-or-string); oneOf branches only say what is required."""
    for path, node in _walk(voice_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for branch in node.get("oneOf", []):
            assert set(branch) <= {"required"}, f"{path}: oneOf may only constrain, not declare"
        if "default" in node:
            jsonschema.Draft4Validator(node).validate(node["default"])


def test_crd_has_status_scale_and_printer_columns():
    version = crd_manifest()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector",
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Engine", "Replicas", "Sessions/pod", "GPU", "Age"]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert set(conditions["items"]["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
