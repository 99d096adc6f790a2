"""Prometheus metrics: the engine's hooks and the API's request outcomes, under one prefix.

These feed the autoscaler and the alerts (TTFB p95, active sessions, free slots). Each server
has its own registry, so several servers (tests) can live in one process. The engine calls
the `EngineObserver` hooks on its thread; prometheus-client is thread-safe.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from orpheus_tts.engine import EngineObserver, Outcome

PREFIX = "orpheus_tts"

# Fine steps where the conversational (100 ms) and longform (300 ms) targets lie.
TTFB_BUCKETS_S = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3,
                  0.35, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
# A batch must finish within 12.19 ms for real-time playback, hence the steps around it.
STEP_BUCKETS_S = (0.002, 0.004, 0.006, 0.008, 0.01, 0.0122, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MAX_ADAPTER_LABELS = 64  # adapter names exported as label values; the rest are `other`
QUEUE_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOP_LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics(EngineObserver):
    """Every metric the server exports; pass it to `Engine.from_config(..., observer=)`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttfb = Histogram(f"{PREFIX}_ttfb_seconds", "Time from a request's arrival to its first audio.",
                              buckets=TTFB_BUCKETS_S, registry=r)
        self.loop_lag = Histogram(f"{PREFIX}_event_loop_lag_seconds", "How late the serving event loop (gRPC, "
                                  "HTTP, WebSocket and every stream's chunks) woke a timer: what a ready callback "
                                  "waited for the loop, sampled every 0.1 s.", buckets=LOOP_LAG_BUCKETS_S, registry=r)
        self.queue_time = Histogram(f"{PREFIX}_queue_seconds", "Time requests waited for a session slot.",
                                    buckets=QUEUE_BUCKETS_S, registry=r)
        self.active_sessions = Gauge(f"{PREFIX}_active_sessions", "Sessions holding a KV-cache slot.", registry=r)
        self.pending_sessions = Gauge(f"{PREFIX}_pending_sessions", "Sessions waiting in the admission queue.",
                                      registry=r)
        self.free_slots = Gauge(f"{PREFIX}_free_slots", "KV-cache slots free for new sessions.", registry=r)
        self.max_sessions = Gauge(f"{PREFIX}_max_concurrent_sessions", "Session slots this server has.",
                                  registry=r)
        self.startup = Gauge(f"{PREFIX}_startup_seconds", "Seconds each start-up phase took (weights, "
                             "compile_cache, graphs, warm_up).", ["phase"], registry=r)
        self.engine_mismatch = Gauge(f"{PREFIX}_engine_mismatch", "1 for each engine manifest field that did not "
                                     "match this server, which therefore compiled at start-up.", ["field"],
                                     registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 once the model is loaded and warmed up.", registry=r)
        self.capacity = Gauge(f"{PREFIX}_capacity_streams", "Streams this server can keep in real time now, from the "
                              "step time it measures (the session slots with scheduler.admission=slots).", registry=r)
        self.step_cost = Gauge(f"{PREFIX}_step_cost_seconds", "The decode step's cost as the engine fits it while it "
                               "runs, by part: fixed, per_row, per_context_token. capacity_streams follows from it "
                               "and stream_context_tokens.", ["part"], registry=r)
        self.stream_context = Gauge(f"{PREFIX}_stream_context_tokens", "The context an admitted stream holds on "
                                    "average over its life (prompt and audio tokens), lately: what capacity_streams "
                                    "assumes of each stream.", registry=r)
        self.saturation = Gauge(f"{PREFIX}_saturation", "Demand over capacity: (admitted + queued sessions) / "
                                "capacity_streams. Above 1, requests queue and then are refused: scale out before.",
                                registry=r)
        self.refusals = Counter(f"{PREFIX}_refused_requests", "Requests refused with RESOURCE_EXHAUSTED / HTTP 429, by "
                                "reason: queue_full (on arrival), at_capacity (after scheduler.max_queue_wait_s "
                                "in the queue), key_rate or key_sessions (one API key over its own limit).",
                                ["reason"], registry=r)
        self.key_requests = Counter(f"{PREFIX}_key_requests", "Requests by API key name (the name in the keys file, "
                                    "never the key) and outcome: accepted, key_rate or key_sessions.",
                                    ["key", "outcome"], registry=r)
        self.unauthenticated = Counter(f"{PREFIX}_unauthenticated_requests", "Requests refused for a missing or "
                                       "unknown API key (UNAUTHENTICATED / HTTP 401 / WebSocket 1008), by protocol.",
                                       ["protocol"], registry=r)
        self.tokens = Counter(f"{PREFIX}_generated_tokens", "Tokens the model generated.", registry=r)
        self.audio = Counter(f"{PREFIX}_audio_seconds", "Seconds of audio produced.", registry=r)
        self.steps = Counter(f"{PREFIX}_engine_steps", "Engine steps that did work.", registry=r)
        self.step_time = Histogram(f"{PREFIX}_step_seconds", "Wall time of one engine step (prefill + decode + audio).",
                                   buckets=STEP_BUCKETS_S, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Sessions decoded together in one step.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Requests by API method and outcome.",
                                ["method", "outcome"], registry=r)
        self.sessions = Counter(f"{PREFIX}_sessions", "Engine sessions ended, by outcome.", ["outcome"], registry=r)
        self.adapter_sessions = Counter(f"{PREFIX}_adapter_sessions", "Sessions on a LoRA adapter (a custom voice) "
                                        f"ended, by adapter and outcome; past {MAX_ADAPTER_LABELS} adapters the rest "
                                        "count as `_other`.", ["adapter", "outcome"], registry=r)
        self.adapter_ttfb = Histogram(f"{PREFIX}_adapter_ttfb_seconds", "Time to first audio of sessions on a LoRA "
                                      "adapter (its loading included), by adapter.", ["adapter"],
                                      buckets=TTFB_BUCKETS_S, registry=r)
        self._adapter_labels: set[str] = set()
        self._tokens_seen = 0  # the engine's total at the last hook (hooks all run on the engine thread)
        self._refusals_seen = {"queue_full": 0, "at_capacity": 0}
        for reason in self._refusals_seen:
            self.refusals.labels(reason)  # exported at 0 from the start, so rate() works at once

    # -- engine hooks (engine thread) ---------------------------------------------------
    def on_startup_phase(self, phase: str, seconds: float) -> None:
        self.startup.labels(phase).set(seconds)

    def on_engine_mismatch(self, fields: list[str]) -> None:
        for name in fields:
            self.engine_mismatch.labels(name).set(1)

    def on_step(self, seconds: float, decode_batch: int, prefill_batch: int, stats) -> None:
        self.steps.inc()
        self.step_time.observe(seconds)
        if decode_batch:
            self.batch_size.observe(decode_batch)
        self._update(stats)

    def on_idle(self, stats) -> None:
        self._update(stats)

    def on_first_audio(self, ttfb_s: float) -> None:
        self.ttfb.observe(ttfb_s)

    def on_session_end(self, outcome, metrics) -> None:
        self.sessions.labels(outcome.value).inc()
        if metrics.adapter is not None:
            label = self._adapter_label(metrics.adapter)
            self.adapter_sessions.labels(label, outcome.value).inc()
            if metrics.ttfb_s is not None:
                self.adapter_ttfb.labels(label).observe(metrics.ttfb_s)
        self.audio.inc(metrics.audio_s)
        if metrics.queue_s is not None:
            self.queue_time.observe(metrics.queue_s)
        elif outcome is Outcome.REFUSED:  # waited the queue's whole bound
            self.queue_time.observe(metrics.elapsed_s)

    def _adapter_label(self, name: str) -> str:
        """The adapter's own name for the first MAX_ADAPTER_LABELS seen, `_other` after: the names
        come from a directory anyone with access may fill, and every label is a series."""
        if name not in self._adapter_labels and len(self._adapter_labels) < MAX_ADAPTER_LABELS:
            self._adapter_labels.add(name)
        return name if name in self._adapter_labels else "_other"  # no adapter name starts with _

    def _update(self, stats) -> None:
        self.active_sessions.set(stats.active_sessions)
        self.pending_sessions.set(stats.pending_sessions)
        self.free_slots.set(stats.free_slots)
        self.max_sessions.set(stats.max_concurrent)
        new, self._tokens_seen = stats.total_tokens - self._tokens_seen, stats.total_tokens
        if new > 0:
            self.tokens.inc(new)
        self.capacity.set(stats.capacity)
        for part, seconds in zip(("fixed", "per_row", "per_context_token"), stats.step_cost):
            self.step_cost.labels(part).set(seconds)
        self.stream_context.set(stats.stream_context)
        self.saturation.set((stats.active_sessions + stats.pending_sessions) / max(stats.capacity, 1))
        for reason, total in (("queue_full", stats.rejected_sessions), ("at_capacity", stats.refused_sessions)):
            new, self._refusals_seen[reason] = total - self._refusals_seen[reason], total
            if new > 0:
                self.refusals.labels(reason).inc(new)

    # -- API side -----------------------------------------------------------------------
    def key_limits_on(self, rate: bool, sessions: bool) -> None:
        """Export the per-key refusal reasons in force at 0, so rate() works at once."""
        for reason, on in (("key_rate", rate), ("key_sessions", sessions)):
            if on:
                self.refusals.labels(reason)
        for protocol in ("grpc", "http", "websocket"):
            self.unauthenticated.labels(protocol)

    def key_request(self, key: str, outcome: str) -> None:
        self.key_requests.labels(key, outcome).inc()
        if outcome != "accepted":
            self.refusals.labels(outcome).inc()

    def unauthenticated_request(self, protocol: str) -> None:
        self.unauthenticated.labels(protocol).inc()

    def request_done(self, method: str, outcome: str) -> None:
        """One API request ended: `ok`, `invalid_argument`, `resource_exhausted`, `cancelled`..."""
        self.requests.labels(method, outcome).inc()

    def exposition(self) -> bytes:
        """The text format, as `/metrics` serves it."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> "MetricsEndpoint":
        """Serve `/metrics` over HTTP on a daemon thread (port 0 picks a free one)."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(httpd, thread)


class MetricsEndpoint:
    def __init__(self, httpd: WSGIServer, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        return self._httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
