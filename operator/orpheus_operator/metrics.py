"""The Prometheus metrics the HPA scales on, and how Prometheus turns server metrics into them.

The server exports `orpheus_tts_ttfb_seconds` (a histogram of time to first audio byte) and
`orpheus_tts_active_sessions` (a gauge of sessions holding a KV-cache slot). The HPA reads two
per-pod metrics through the custom metrics API (`custom.metrics.k8s.io`), served by
prometheus-adapter with the rules below, or by KEDA with the PromQL below:

- `orpheus_tts_ttfb_p95_seconds`: the 95th percentile of TTFB over the last 2 minutes, per pod.
- `orpheus_tts_active_sessions`: active sessions, per pod.

The Helm chart's prometheus-adapter rules (`templates/_adapter-rules.tpl`) are generated from
PROMETHEUS_ADAPTER_RULES, and its KEDA triggers' queries (`templates/_keda-queries.tpl`) from
KEDA_QUERIES, by `make generate`; the test suite fails when they drift, so the names the HPA asks
for, the names the adapter serves and what KEDA measures cannot drift apart.
"""

from __future__ import annotations

TTFB_P95_METRIC = "orpheus_tts_ttfb_p95_seconds"
ACTIVE_SESSIONS_METRIC = "orpheus_tts_active_sessions"

HPA_METRICS: dict[str, str] = {
    "ttfbP95": TTFB_P95_METRIC,
    "activeSessions": ACTIVE_SESSIONS_METRIC,
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
}

# PromQL a KEDA trigger runs for one voice, keyed by the HPA metric it stands for: `{selector}` is
# the voice's label matchers (KEDA's HPA averages the sessions over pods itself).
KEDA_QUERIES: dict[str, str] = {
    TTFB_P95_METRIC: (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(orpheus_tts_ttfb_seconds_bucket{{{{ {{selector}} }}}}[{TTFB_WINDOW}])))"
    ),
    ACTIVE_SESSIONS_METRIC: "sum(orpheus_tts_active_sessions{{ {selector} }})",
}

_POD_RESOURCES = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}

# prometheus-adapter `rules:` entries (its config.yaml) that serve the two metrics per pod.
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
]
