"""The Prometheus metrics the HPA scales on, and how Prometheus turns server metrics into them.

The server exports `orpheus_tts_ttfb_seconds` (a histogram of time to first audio byte),
`orpheus_tts_active_sessions` (a gauge of sessions holding a KV-cache slot) and
`orpheus_tts_saturation` (a gauge: admitted plus queued sessions over `orpheus_tts_capacity_streams`,
the streams the pod can keep in real time at its measured step time). The HPA reads three per-pod
metrics through the custom metrics API (`custom.metrics.k8s.io`), served by prometheus-adapter
with the rules below, or by KEDA with the PromQL below:

- `orpheus_tts_ttfb_p95_seconds`: the 95th percentile of TTFB over the last 2 minutes, per pod.
- `orpheus_tts_active_sessions`: active sessions, per pod.
- `orpheus_tts_saturation`: demand over real-time capacity, per pod. At 1 a pod has no stream to
  spare and new requests queue; past it they wait and are then refused (RESOURCE_EXHAUSTED / HTTP
  429). The HPA's target (`autoscaling.targetSaturation`, default 0.8) lies below 1, so the voice
  scales out while every admitted stream is still served in real time.

The Helm chart's prometheus-adapter rules (`templates/_adapter-rules.tpl`) are generated from
PROMETHEUS_ADAPTER_RULES, and its KEDA triggers' queries (`templates/_keda-queries.tpl`) from
KEDA_QUERIES, by `make generate`; the test suite fails when they drift, so the names the HPA asks
for, the names the adapter serves and what KEDA measures cannot drift apart.
"""

from __future__ import annotations

TTFB_P95_METRIC = "orpheus_tts_ttfb_p95_seconds"
ACTIVE_SESSIONS_METRIC = "orpheus_tts_active_sessions"
SATURATION_METRIC = "orpheus_tts_saturation"

HPA_METRICS: dict[str, str] = {
    "ttfbP95": TTFB_P95_METRIC,
    "activeSessions": ACTIVE_SESSIONS_METRIC,
    "saturation": SATURATION_METRIC,
}

# Window over which the TTFB quantile is computed.
TTFB_WINDOW = "2m"

# PromQL for one pod's value of each metric (KEDA's prometheus trigger, dashboards, alerts).
PROMQL: dict[str, str] = {
    TTFB_P95_METRIC: (
        f"histogram_quantile(0.95, sum by (namespace, pod, le) "
        f"(rate(orpheus_tts_ttfb_seconds_bucket[{TTFB_WINDOW}])))"
    ),
    ACTIVE_SESSIONS_METRIC: "sum by (namespace, pod) (orpheus_tts_active_sessions)",
    SATURATION_METRIC: "max by (namespace, pod) (orpheus_tts_saturation)",
}

# PromQL a KEDA trigger runs for one voice, keyed by the HPA metric it stands for: `{selector}` is
# the voice's label matchers (KEDA's HPA averages the sessions over pods itself).
#
# Saturation is summed over the voice's pods too, neither its max nor its average. Its trigger is
# an `AverageValue` one: KEDA hands the HPA one External value and the HPA divides it by the target,
# desired = ceil(value / targetSaturation), without a pod count. With the sum that is
# ceil(sum_i s_i / target), what the operator's HPA computes from the per-pod metric against an
# AverageValue target (ceil(n * avg_i s_i / target)). The average there would ask for
# ceil(avg / 0.8) pods in all: 2 for ten pods at 0.9, scaling in a voice that should grow. The max
# (or the average) as a `Value` trigger, ceil(n * x / target), would lean on the voice's
# status.replicas being current, and the max chases the hottest pod, which a rebalance cures, not
# a new pod.
KEDA_QUERIES: dict[str, str] = {
    TTFB_P95_METRIC: (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(orpheus_tts_ttfb_seconds_bucket{{{{ {{selector}} }}}}[{TTFB_WINDOW}])))"
    ),
    ACTIVE_SESSIONS_METRIC: "sum(orpheus_tts_active_sessions{{ {selector} }})",
    SATURATION_METRIC: "sum(orpheus_tts_saturation{{ {selector} }})",
}

_POD_RESOURCES = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}

# prometheus-adapter `rules:` entries (its config.yaml) that serve the three metrics per pod.
PROMETHEUS_ADAPTER_RULES: list[dict] = [
    {
        "seriesQuery": 'orpheus_tts_ttfb_seconds_bucket{namespace!="",pod!=""}',
        "resources": _POD_RESOURCES,
        "name": {"matches": "^orpheus_tts_ttfb_seconds_bucket$", "as": TTFB_P95_METRIC},
        "metricsQuery": (
            "histogram_quantile(0.95, sum by (<<.GroupBy>>, le) "
            f"(rate(<<.Series>>{{<<.LabelMatchers>>}}[{TTFB_WINDOW}])))"
        ),
    },
    {
        "seriesQuery": 'orpheus_tts_active_sessions{namespace!="",pod!=""}',
        "resources": _POD_RESOURCES,
        "name": {"matches": "^orpheus_tts_active_sessions$", "as": ACTIVE_SESSIONS_METRIC},
        "metricsQuery": "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
    },
    {
        # A ratio: one series per pod, so max only drops the labels the pod's key does not need
        # (summing two scrapes of one pod, through two monitors, would double it).
        "seriesQuery": 'orpheus_tts_saturation{namespace!="",pod!=""}',
        "resources": _POD_RESOURCES,
        "name": {"matches": "^orpheus_tts_saturation$", "as": SATURATION_METRIC},
        "metricsQuery": "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
    },
]
