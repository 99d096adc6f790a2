"""The chart's alerts under promtool: the rules load, and each alert fires and stays silent as
`alerts_test.yaml` says. promtool comes from Debian's `prometheus` package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from chart_testkit import ALL_ON, prometheus_rule_groups, require_binary, with_values

HERE = Path(__file__).resolve().parent
ALERTS = {"OrpheusTTSTTFBAboveTarget", "OrpheusTTSVoiceSaturated", "OrpheusTTSVoiceOverCapacity",
          "OrpheusTTSRequestsRefused", "OrpheusTTSHighErrorRatio", "OrpheusTTSEngineBuildFailed",
          "OrpheusTTSVoiceNotReady", "OrpheusTTSPodRestarting"}


def write_rules(directory: Path, values: dict) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule_groups(values), sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rendered_rules(tmp_path):
    rules = write_rules(tmp_path, ALL_ON)
    result = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


def test_each_alert_fires_and_stays_silent_under_promtool(tmp_path):
    write_rules(tmp_path, ALL_ON)
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {t["alertname"] for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert tested == ALERTS


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    readme = (HERE.parents[1] / "charts" / "orpheus-tts" / "README.md").read_text()
    (_, alerts) = prometheus_rule_groups(ALL_ON)["groups"]
    assert {r["alert"] for r in alerts["rules"]} == ALERTS
    for rule in alerts["rules"]:
        annotations = rule["annotations"]
        assert annotations["summary"] and "{{ $value" in annotations["description"] or "query" in annotations["description"]
        anchor = annotations["runbook_url"].split("#")[1]
        assert anchor == rule["alert"].lower()
        assert f"### {rule['alert']}" in readme, f"README has no runbook section for {rule['alert']}"


def test_alerts_can_be_switched_off_one_by_one():
    values = with_values(ALL_ON, **{f"prometheusRule.alerts.{name}.enabled": False
                                   for name in ("voiceNotReady", "podRestarting", "requestsRefused")})
    (_, alerts) = prometheus_rule_groups(values)["groups"]
    assert {r["alert"] for r in alerts["rules"]} == ALERTS - {"OrpheusTTSVoiceNotReady", "OrpheusTTSPodRestarting",
                                                              "OrpheusTTSRequestsRefused"}


def test_capacity_alerts_take_their_threshold_duration_and_severity_from_values():
    values = with_values(ALL_ON, **{"prometheusRule.alerts.voiceOverCapacity.threshold": 0.95,
                                    "prometheusRule.alerts.voiceOverCapacity.for": "10m",
                                    "prometheusRule.alerts.requestsRefused.severity": "critical"})
    (_, alerts) = prometheus_rule_groups(values)["groups"]
    rules = {r["alert"]: r for r in alerts["rules"]}
    over = rules["OrpheusTTSVoiceOverCapacity"]
    assert over["expr"] == "namespace_voice:orpheus_tts_saturation:ratio > 0.95"
    assert (over["for"], over["labels"]["severity"]) == ("10m", "warning")
    assert "above 95% for 10m" in over["annotations"]["description"]
    refused = rules["OrpheusTTSRequestsRefused"]
    assert (refused["for"], refused["labels"]["severity"]) == ("5m", "critical")
    assert refused["expr"] == ('sum by (namespace, voice, reason) (rate(orpheus_tts_refused_requests_total'
                               '{job="orpheus-tts",reason=~"queue_full|at_capacity"}[5m])) > 0')
