"""Every generated copy of a fact (CRDs, rules, defaults, references) matches its one source."""

from tools.generate import all_outputs, drifted


def test_every_generated_copy_matches_its_source():
    outputs = all_outputs()
    assert drifted(outputs) == [], "run `make generate` and commit the result"


def test_every_hpa_metric_has_a_generated_adapter_rule_keda_query_and_crd_target():
    """One HPA metric, one copy of it in each generated file: a metric added to metrics.py reaches
    the adapter's rules, the KEDA queries and (through its target) the CRDs."""
    import yaml

    from orpheus_operator.metrics import HPA_METRICS
    from tools.gen_kubernetes import ADAPTER_RULES, CRD_COPIES, KEDA_QUERIES

    outputs = all_outputs()
    adapter = outputs[ADAPTER_RULES]
    rules = yaml.safe_load(adapter[adapter.index("\nrules:\n"):adapter.rindex("{{- end }}")])["rules"]
    assert [rule["name"]["as"] for rule in rules] == list(HPA_METRICS.values())
    for key in HPA_METRICS:
        assert f'{{{{- define "orpheus-tts.kedaQuery.{key}" -}}}}' in outputs[KEDA_QUERIES]
    assert "sum(orpheus_tts_saturation{ {{- . -}} })" in outputs[KEDA_QUERIES]
    for path in CRD_COPIES:
        crd = yaml.safe_load(outputs[path])
        scaling = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["autoscaling"]
        assert {"targetTtfbP95Ms", "targetActiveSessionsPerPod", "targetSaturation"} <= set(scaling["properties"])
        assert scaling["properties"]["targetSaturation"]["default"] == 0.8
