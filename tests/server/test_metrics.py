"""Prometheus `/metrics`: the server's metrics are exposed and move with the traffic."""

import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orpheus_tts.api.gen import tts_pb2

EXPECTED = {
    "orpheus_tts_ttfb_seconds": "histogram",
    "orpheus_tts_queue_seconds": "histogram",
    "orpheus_tts_step_seconds": "histogram",
    "orpheus_tts_batch_size": "histogram",
    "orpheus_tts_event_loop_lag_seconds": "histogram",
    "orpheus_tts_active_sessions": "gauge",
    "orpheus_tts_pending_sessions": "gauge",
    "orpheus_tts_free_slots": "gauge",
    "orpheus_tts_max_concurrent_sessions": "gauge",
    "orpheus_tts_ready": "gauge",
    "orpheus_tts_generated_tokens": "counter",
    "orpheus_tts_audio_seconds": "counter",
    "orpheus_tts_engine_steps": "counter",
    "orpheus_tts_requests": "counter",
    "orpheus_tts_sessions": "counter",
}


def scrape(url: str) -> tuple[dict, dict]:
    """({(sample name, sorted labels): value}, {family name: type})."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


async def test_metrics_endpoint_exposes_every_metric_and_they_move(grpc_server, tts):
    before, types = scrape(grpc_server.metrics_url)
    assert {name: types.get(name) for name in EXPECTED} == EXPECTED
    [r async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text="Count me."))]
    with pytest.raises(grpc.aio.AioRpcError):
        [r async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text="Hi.", voice="nobody"))]
    after, _ = scrape(grpc_server.metrics_url)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("orpheus_tts_requests_total", method="Synthesize", outcome="ok") == 1
    assert moved("orpheus_tts_requests_total", method="Synthesize", outcome="invalid_argument") == 1
    assert moved("orpheus_tts_sessions_total", outcome="ok") == 1
    assert moved("orpheus_tts_ttfb_seconds_count") == 1
    assert moved("orpheus_tts_queue_seconds_count") == 1
    assert moved("orpheus_tts_generated_tokens_total") >= 7
    assert moved("orpheus_tts_audio_seconds_total") > 0
    assert moved("orpheus_tts_step_seconds_count") > 0 and moved("orpheus_tts_batch_size_count") > 0
    assert after[("orpheus_tts_ready", ())] == 1
    assert after[("orpheus_tts_free_slots", ())] == after[("orpheus_tts_max_concurrent_sessions", ())] == 16
    assert after[("orpheus_tts_active_sessions", ())] == after[("orpheus_tts_pending_sessions", ())] == 0


def test_ttfb_buckets_are_fine_between_50_and_300_ms(grpc_server):
    samples, _ = scrape(grpc_server.metrics_url)
    bounds = sorted(float(dict(labels)["le"]) for name, labels in samples if name == "orpheus_tts_ttfb_seconds_bucket")
    inside = [b for b in bounds if 0.05 <= b <= 0.3]
    assert inside[0] == 0.05 and inside[-1] == 0.3
    assert max(b - a for a, b in zip(inside, inside[1:])) <= 0.025 + 1e-9


def test_a_blocked_event_loop_shows_in_the_loop_lag(start_grpc_server):
    """Every door and every chunk share the serving loop: a callback that holds it for 0.5 s makes
    the lag sampler (asleep for up to 0.1 s of it) wake 0.4-0.5 s late, and the histogram says so."""
    server = start_grpc_server(load=False)
    before, _ = scrape(server.metrics_url)
    server.loop.call_soon_threadsafe(time.sleep, 0.5)  # the serving loop's thread, held
    time.sleep(0.8)
    after, _ = scrape(server.metrics_url)

    def count(le):
        key = ("orpheus_tts_event_loop_lag_seconds_bucket", (("le", le),))
        return after[key] - before.get(key, 0.0)

    total = after[("orpheus_tts_event_loop_lag_seconds_count", ())]
    assert count("0.25") < count("0.5") and total - count("0.25") >= 1
