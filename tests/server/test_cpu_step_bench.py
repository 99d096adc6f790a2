"""`python -m orpheus_bench.cpu_step`: the demo model's decode step timed on CPU, written as the
JSON that runs are compared by."""

import json
import subprocess
import sys


def test_cpu_step_bench_writes_a_step_time_per_batch_with_its_provenance(tmp_path):
    out = tmp_path / "step.json"
    result = subprocess.run(
        [sys.executable, "-m", "orpheus_bench.cpu_step", "--out", str(out), "--batches", "1,4", "--context", "32",
         "--steps", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["device"].startswith("CPU (") and results["torch"] and results["git_commit"]
    assert results["command"].startswith("python -m orpheus_bench.cpu_step --out")
    assert [row["batch"] for row in results["steps"]] == [1, 4]
    for row in results["steps"]:
        assert row["context"] == 32 and row["step_ms"] > 0
        assert row["tokens_per_s"] == row["batch"] / row["step_ms"] * 1e3
