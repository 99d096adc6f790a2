"""The chart's queries against a real Prometheus scraping real servers.

Two `orpheus-tts serve` processes (demo model, CPU) stand for two pods of one voice; a real
Prometheus (Debian's `prometheus` package) scrapes their /metrics on loopback with the labels
the chart's ServiceMonitor gives (namespace, pod, voice, job) and loads the chart's rules.
After some `orpheus-tts say --server` requests, the prometheus-adapter rules (placeholders
filled as the adapter fills them), the KEDA triggers and every alert expression are evaluated
through Prometheus' HTTP API. The HPA metrics come back with one value per pod, so the names
in the chart, the operator and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml
from chart_testkit import ALL_ON, by_kind, render_objects, require_binary
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orpheus_operator.metrics import HPA_METRICS, PROMETHEUS_ADAPTER_RULES

NAMESPACE, VOICE = "voices", "tara-chat"
PODS = ["tara-chat-5d8f7-a1", "tara-chat-5d8f7-b2"]
CLI = [sys.executable, "-m", "orpheus_tts.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two servers, one Prometheus scraping them with the chart's rules loaded; after traffic."""
    prometheus_bin = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    servers, processes = [], []
    try:
        for pod in PODS:
            grpc_port, metrics_port = free_port(), free_port()
            log = open(tmp / f"{pod}.log", "w")
            processes.append(subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
                 "--http-port", "-1", "--device", "cpu",
                 "--set", "scheduler.max_concurrent_sessions=2", "--set", "scheduler.max_context_tokens=512"],
                stdout=log, stderr=subprocess.STDOUT))
            servers.append((pod, grpc_port, metrics_port))

        (rule,) = by_kind(render_objects(ALL_ON), "PrometheusRule")
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        # What prometheus-operator generates for the ServiceMonitor, reduced to static targets:
        # job from the monitor's relabeling, namespace and pod from discovery, voice from the pod label.
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "scrape_configs": [{
                "job_name": ALL_ON.get("metrics", {}).get("jobLabel", "orpheus-tts"),
                "static_configs": [
                    {"targets": [f"127.0.0.1:{m}"], "labels": {"namespace": NAMESPACE, "pod": pod, "voice": VOICE}}
                    for pod, _, m in servers
                ],
            }],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        web = f"127.0.0.1:{free_port()}"
        processes.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address={web}"],
            stdout=open(tmp / "prometheus.log", "w"), stderr=subprocess.STDOUT))
        prometheus = Prometheus(f"http://{web}")

        for pod, grpc_port, _ in servers:
            wait_until(lambda: serving(grpc_port), 180, f"server {pod} to serve")
        wait_until(prometheus.ready, 60, "Prometheus to be ready")
        wait_until(lambda: len(prometheus.query('up{job="orpheus-tts"} == 1')) == len(PODS), 30, "both targets up")

        def say(grpc_port: int, text: str) -> None:
            out = tmp / f"{grpc_port}-{len(text)}.wav"
            done = subprocess.run([*CLI, "say", text, "--server", f"127.0.0.1:{grpc_port}", "-o", str(out)],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr

        # Two rounds: the first creates the request counters, so the second shows up in rate().
        for round_, text in enumerate(("Hello there.", "How are you today?"), start=1):
            with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
                for future in [pool.submit(say, g, text) for _, g, _ in servers]:
                    future.result()
            wait_until(lambda: len(prometheus.query(f'orpheus_tts_requests_total{{outcome="ok"}} >= {round_}')) == len(PODS),
                       30, f"round {round_} of requests to be scraped")
        yield prometheus
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def adapter_query(rule: dict, series: str, namespace: str, pods: list[str]) -> str:
    """The metricsQuery as prometheus-adapter runs it for `kubectl get --raw .../pods/*/<metric>`:
    Series is the discovered series name, LabelMatchers select the namespace and the pods, GroupBy is `pod`."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))


def test_adapter_rules_discover_and_serve_one_value_per_pod_for_each_hpa_metric(cluster):
    (config_map,) = [c for c in by_kind(render_objects(ALL_ON), "ConfigMap") if "adapter" in c["metadata"]["name"]]
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert rules == PROMETHEUS_ADAPTER_RULES
    served = {}
    for rule in rules:
        # Discovery: the adapter lists series matching seriesQuery and renames them.
        found = cluster.get("/api/v1/series", **{"match[]": rule["seriesQuery"]})
        names = {s["__name__"] for s in found}
        assert len(names) == 1, names
        (series,) = names
        assert {s["pod"] for s in found} == set(PODS) and {s["namespace"] for s in found} == {NAMESPACE}
        metric = re.sub(rule["name"]["matches"], rule["name"]["as"], series)
        result = cluster.query(adapter_query(rule, series, NAMESPACE, PODS))
        served[metric] = {r["metric"]["pod"]: float(r["value"][1]) for r in result}
        assert len(result) == len(PODS), (metric, result)
    assert set(served) == set(HPA_METRICS.values())
    for pod in PODS:
        assert 0 < served["orpheus_tts_ttfb_p95_seconds"][pod] < 10  # a real quantile of real requests
        assert served["orpheus_tts_active_sessions"][pod] == 0  # idle after the requests
        assert served["orpheus_tts_saturation"][pod] == 0  # no demand, whatever the capacity


def test_keda_triggers_return_one_value_for_the_voice(cluster):
    tara = [s for s in by_kind(render_objects(ALL_ON), "ScaledObject") if s["metadata"]["name"] == VOICE]
    for trigger in tara[0]["spec"]["triggers"]:
        result = cluster.query(trigger["metadata"]["query"])
        assert len(result) == 1, (trigger["name"], result)
        value = float(result[0]["value"][1])
        assert (0 < value < 10) if trigger["name"] == "ttfb-p95" else value == 0


def test_recording_rules_and_alert_expressions_evaluate_cleanly(cluster):
    wait_until(lambda: all(r["health"] == "ok" for g in cluster.get("/api/v1/rules")["groups"] for r in g["rules"]),
               15, "every rule evaluated without error")
    groups = cluster.get("/api/v1/rules")["groups"]
    rules = {r.get("name"): r for g in groups for r in g["rules"]}
    assert len(rules) == 13
    p95 = wait_until(lambda: cluster.query("namespace_voice:orpheus_tts_ttfb_seconds:p95_rate2m"), 15,
                     "the TTFB recording rule")
    assert [(r["metric"]["namespace"], r["metric"]["voice"]) for r in p95] == [(NAMESPACE, VOICE)]
    requests = wait_until(lambda: cluster.query("namespace_voice:orpheus_tts_requests:rate5m > 0"), 15,
                          "the request-rate recording rule")
    assert [(r["metric"]["namespace"], r["metric"]["voice"]) for r in requests] == [(NAMESPACE, VOICE)]
    # The voice's pooled saturation: once the last request's session has ended (the rule may still
    # hold a sample from while it ran), no demand over the real-time capacity its two servers report.
    saturation = wait_until(lambda: cluster.query("namespace_voice:orpheus_tts_saturation:ratio == 0"), 15,
                            "the saturation recording rule to show the idle voice")
    assert [(r["metric"]["namespace"], r["metric"]["voice"]) for r in saturation] == [(NAMESPACE, VOICE)]
    assert len(cluster.query('orpheus_tts_capacity_streams{job="orpheus-tts"} > 0')) == len(PODS)
    # Both refusal reasons are exported at 0 from the start, so the refusal alert's rate() has series.
    refusals = cluster.query('orpheus_tts_refused_requests_total{job="orpheus-tts"} == 0')
    assert sorted((r["metric"]["pod"], r["metric"]["reason"]) for r in refusals) == sorted(
        (pod, reason) for pod in PODS for reason in ("queue_full", "at_capacity"))
    for name, rule in rules.items():
        cluster.query(rule["query"])  # every expression parses and runs against real series
    # With light traffic and no kube-state-metrics nothing fires, except possibly the TTFB alert's
    # pending state on a slow CPU (the default target is 250 ms): none is firing yet.
    firing = [a for a in cluster.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []
