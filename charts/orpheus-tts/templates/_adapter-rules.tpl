{{/* prometheus-adapter `rules:`; the <<...>> placeholders are the adapter's own. */}}
{{- define "orpheus-tts.adapterRules" -}}
rules:
  - seriesQuery: 'orpheus_tts_ttfb_seconds_bucket{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
    name:
      matches: ^orpheus_tts_ttfb_seconds_bucket$
      as: orpheus_tts_ttfb_p95_seconds
    metricsQuery: histogram_quantile(0.95, sum by (<<.GroupBy>>, le) (rate(<<.Series>>{<<.LabelMatchers>>}[2m])))
  - seriesQuery: 'orpheus_tts_active_sessions{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
    name:
      matches: ^orpheus_tts_active_sessions$
      as: orpheus_tts_active_sessions
    metricsQuery: sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})
{{- end }}
