"""`orpheus-tts bench` (`orpheus_bench.load`): the load benchmark, in-process and against a real gRPC server."""

import json
import subprocess
import sys

import pytest

from orpheus_bench import load, load_cli
from orpheus_tts import cli
from server_testkit import RunningServer, grpc_server_config

SMALL = ["--set", "scheduler.max_context_tokens=512", "--set", "tuning.longform.max_text_chars=200"]
SHORT = ["--text", "Hello there.", "--stagger-s", "0.2"]


def _check_levels(results, levels, requests):
    assert [row["concurrency"] for row in results["levels"]] == levels
    for row in results["levels"]:
        assert row["streams"] == row["concurrency"] * requests
        assert row["success_rate"] == 1.0, row["errors"]
        assert 0 < row["ttfb_p50_ms"] <= row["ttfb_p95_ms"] <= row["ttfb_p99_ms"]
        assert 0.0 <= row["realtime_share"] <= 1.0
        assert row["stall_p50_ms"] <= row["stall_max_ms"]
        assert row["tokens_per_s"] > 0 and row["mean_audio_s"] > 0


def test_stall_is_the_worst_wait_for_a_chunk_after_playback_starts():
    # Chunks of 0.1 s: the third arrives 0.25 s after the first, when 0.2 s had been playing.
    arrivals, before = [1.0, 1.05, 1.25], [0.0, 0.1, 0.2]
    assert load.lateness_ms(arrivals, before) == pytest.approx(50.0)
    assert load.worst_wait(arrivals, before)[1] == pytest.approx(0.2)  # the chunk after 0.2 s of audio
    assert not load.is_realtime(arrivals, before)
    on_time = [1.0, 1.05, 1.15]
    assert load.lateness_ms(on_time, before) == pytest.approx(-50.0)
    assert load.is_realtime(on_time, before)
    assert load.lateness_ms([], []) is None and not load.is_realtime([], [])


def test_bench_in_process_scaling_writes_each_level(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "orpheus_tts.cli", "bench", "--in-process", "--mode", "scaling", "--concurrent", "2",
         "--requests", "2", "--device", "cpu", *SMALL, *SHORT, "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "concurrency 2:" in result.stderr  # the progress/summary lines go to stderr
    results = json.loads(out.read_text())
    assert results["command"].startswith("orpheus-tts bench --in-process")
    assert results["target"] == "in-process" and results["mode"] == "scaling"
    assert results["target_ttfb_ms"] == 300.0  # the longform profile's target
    _check_levels(results, [1, 2], 2)
    assert [row["concurrency"] for row in results["scaling"]] == [1, 2]


def test_bench_against_a_server_tunes_to_a_concurrency_within_range(tmp_path):
    server = RunningServer(grpc_server_config())
    try:
        out = tmp_path / "server.json"
        code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--mode", "all",
                         "--concurrent", "2", "--requests", "1", "--target-ttfb-ms", "60000", *SHORT,
                         "--output", str(out)])
    finally:
        server.close()
    assert code == 0
    results = json.loads(out.read_text())
    assert results["target"] == server.address and results["command"].startswith("orpheus-tts")
    _check_levels(results, [1, 2], 1)
    assert 0 <= results["tuning"]["max_concurrent_meeting_target"] <= 2
    assert results["tuning"]["target_ttfb_ms"] == 60000


def test_bench_scaling_runs_the_levels_given_in_their_order(tmp_path):
    server = RunningServer(grpc_server_config())
    try:
        out = tmp_path / "levels.json"
        code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--mode", "scaling",
                         "--levels", "3,1", "--requests", "1", *SHORT, "--output", str(out)])
    finally:
        server.close()
    assert code == 0
    results = json.loads(out.read_text())
    assert [row["concurrency"] for row in results["scaling"]] == [3, 1]
    assert results["workload"]["levels"] == [3, 1]
    _check_levels(results, [1, 3], 1)


def test_bench_loads_grpc_http_and_websocket_with_the_same_workload(tmp_path, start_http_server):
    server = start_http_server()
    out = tmp_path / "apis.json"
    code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--api", "grpc,http,websocket",
                     "--http-server", server.url.removeprefix("http://"), "--mode", "scaling", "--levels", "2",
                     "--requests", "1", *SHORT, "--output", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["api"] == ["grpc", "http", "websocket"]
    assert [(row["api"], row["concurrency"]) for row in results["levels"]] == [
        ("grpc", 2), ("http", 2), ("websocket", 2)]
    for api, run in results["apis"].items():
        _check_levels(run, [2], 1)
    # The same text, seed and budget through each door: the same audio, to the frame.
    audio = {row["api"]: row["mean_audio_s"] for row in results["levels"]}
    assert audio["grpc"] == pytest.approx(audio["http"]) == pytest.approx(audio["websocket"])


def test_bench_spreads_streams_over_adapters_the_writer_made(tmp_path, start_http_server):
    from orpheus_bench.lora_adapters import write_adapters
    from orpheus_tts.model.llama import ModelArgs

    names = write_adapters(tmp_path / "adapters", ModelArgs.from_name("demo"), count=2, rank=4)
    assert names == ["bench-0", "bench-1"]
    server = start_http_server(**{"adapters.dir": str(tmp_path / "adapters"), "adapters.max_resident": 2,
                                  "adapters.max_rank": 4})
    out = tmp_path / "adapters.json"
    code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--api", "grpc,http",
                     "--http-server", server.url.removeprefix("http://"), "--adapters", "2", "--mode", "scaling",
                     "--levels", "2", "--requests", "1", *SHORT, "--output", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["workload"]["adapters"] == 2
    for run in results["apis"].values():
        _check_levels(run, [2], 1)
    metrics = server.server.metrics.registry
    served = {name: metrics.get_sample_value("orpheus_tts_adapter_sessions_total", {"adapter": name, "outcome": "ok"})
              for name in names}
    assert served == {"bench-0": 2.0, "bench-1": 2.0}  # two streams a door, one on each adapter


def test_bench_sends_its_api_key_through_every_door(tmp_path, start_http_server):
    keys = tmp_path / "keys"
    keys.write_text("bench:s3cret-bench-key\n")
    server = start_http_server(**{"security.api_keys_file": str(keys)})
    common = ["--log-level", "WARNING", "bench", "--server", server.address, "--api", "grpc,http,websocket",
              "--http-server", server.url.removeprefix("http://"), "--mode", "scaling", "--levels", "1",
              "--requests", "1", *SHORT]
    assert cli.main([*common, "--api-key", "s3cret-bench-key", "--output", str(tmp_path / "with.json")]) == 0
    for run in json.loads((tmp_path / "with.json").read_text())["apis"].values():
        _check_levels(run, [1], 1)
    assert cli.main([*common, "--api-key", "wrong", "--output", str(tmp_path / "without.json")]) == 1
    rows = json.loads((tmp_path / "without.json").read_text())["levels"]
    assert [row["success_rate"] for row in rows] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("apis", ["grpc,smtp", "http,http", ""])
def test_bench_refuses_apis_it_does_not_know_or_names_twice(apis):
    with pytest.raises(ValueError, match="--api"):
        load_cli.parse_apis(apis)


@pytest.mark.parametrize("levels", ["1,x", "0,4", ""])
def test_bench_refuses_levels_that_are_not_positive_whole_numbers(levels):
    with pytest.raises(ValueError, match="--levels"):
        load_cli.parse_levels(levels)


def test_bench_needs_a_target(capsys):
    try:
        cli.main(["bench", "--mode", "scaling"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("bench without --server or --in-process should fail")


def test_bench_without_the_bench_package_says_what_is_missing():
    hide = ("import sys; sys.modules['orpheus_bench'] = None; from orpheus_tts.cli import main; "
            "sys.exit(main(['bench', '--in-process']))")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs the orpheus_bench package" in result.stderr


def test_bench_overload_and_open_loop_count_refusals_and_cancels_apart(tmp_path):
    """Against a 2-slot server that refuses after 0.3 s in the queue: the mixed workload at 1.5x
    and 2x its capacity, then Poisson arrivals; nothing may fail but be refused or cancelled."""
    server = RunningServer(grpc_server_config(**{"scheduler.max_concurrent_sessions": 2,
                                                 "scheduler.max_pending_sessions": 16,
                                                 "scheduler.max_queue_wait_s": 0.3}))
    try:
        out = tmp_path / "overload.json"
        code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--mode", "overload",
                         "--capacity", "2", "--workload", "mixed", "--requests", "1", "--stagger-s", "0",
                         "--arrival-rate", "8", "--duration-s", "0.5", "--output", str(out)])
    finally:
        server.close()
    assert code == 0
    results = json.loads(out.read_text())
    assert results["workload"]["kind"] == "mixed" and results["workload"]["cancelled_share"] == 0.1
    assert [(row["concurrency"], row["factor"]) for row in results["overload"]] == [(3, 1.5), (4, 2.0)]
    rows = results["overload"] + results["open_loop"]
    assert results["open_loop"][0]["arrival_rate_per_s"] == 8
    for row in rows:
        assert row["failed"] == 0, row["errors"]
        assert row["refused"] + row["cancelled"] <= row["streams"]
    # Four clients on two slots, each request waiting at most 0.3 s: some are refused.
    assert results["overload"][1]["refused"] > 0
    assert all(row["admitted_realtime_share"] is None or 0 <= row["admitted_realtime_share"] <= 1 for row in rows)


def test_bench_spreads_each_level_over_client_processes(tmp_path, start_http_server):
    """Two client processes through every door: every stream of each level ran and was counted once,
    and each row says how many processes ran it and how late their loops were."""
    server = start_http_server()
    out = tmp_path / "spread.json"
    code = cli.main(["--log-level", "WARNING", "bench", "--server", server.address, "--api", "grpc,http,websocket",
                     "--http-server", server.url.removeprefix("http://"), "--mode", "scaling", "--levels", "3",
                     "--requests", "1", "--client-processes", "2", *SHORT, "--output", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["workload"]["client_processes"] == 2
    for row in results["levels"]:
        assert (row["streams"], row["failed"], row["client_processes"]) == (3, 0, 2)
        assert row["client_lag_p99_ms"] is not None and 0 <= row["client_lag_p99_ms"] <= row["client_lag_max_ms"]


def test_client_processes_default_to_one_per_64_streams_within_half_the_cpus():
    from orpheus_bench.clients import auto_processes

    assert [auto_processes(n, 16) for n in (1, 64, 65, 256, 450, 2000)] == [1, 1, 2, 4, 8, 8]
    assert auto_processes(256, 2) == 1


def test_bench_in_process_refuses_client_processes(capsys):
    assert cli.main(["bench", "--in-process", "--client-processes", "2"]) != 0
    assert "--client-processes needs --server" in capsys.readouterr().err
