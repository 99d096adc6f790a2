"""`python -m engine_jobs.build`, as the build Job runs it, and `serve --engine` starting from
what it wrote: real checkpoints on disk, real subprocesses (for the race and the kill)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from checkpoint_testkit import llama_config, write_checkpoint, write_demo_snac
from orpheus_tts.config import load_config
from orpheus_tts.engine.engine_dir import COMPLETE, MANIFEST, EngineDir, EngineError
from orpheus_tts.engine.loading import load_parts

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "orpheus_tts.cli"]


def build_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine_jobs.build", *args]


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(build_cmd(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)


def demo_args(out: Path, *extra: str) -> list[str]:
    return ["--model-source", "demo", "--snac-source", "demo", "--precision", "bf16", "--gpu-arch", "sm_90",
            "--output", str(out), *extra]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pvc")
    write_checkpoint(root / "orpheus", llama_config())
    return root / "orpheus", write_demo_snac(root / "snac")


def pvc_args(sources, out: Path, *extra: str) -> list[str]:
    model, snac = sources
    return ["--model-source", f"pvc:{model}", "--snac-source", f"pvc:{snac}", "--precision", "fp8",
            "--gpu-arch", "sm_90", "--output", str(out), *extra]


def test_a_demo_engine_is_published_complete_and_serves_the_same_audio(tmp_path):
    out = tmp_path / "cache" / "engine"
    first = build(*demo_args(out))
    assert first.returncode == 0, first.stderr
    assert "the compile step needs the sm_90 GPU (no GPU on this machine)" in first.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert (out / COMPLETE).read_text().strip() == manifest["contentHash"]
    assert manifest["pending"] == ["compile"] and manifest["precision"] == "bf16"
    assert manifest["slotBudget"] == {"sessions": 32, "contextTokens": 4096, "maxBatch": 16}
    assert manifest["buckets"]["decode"][-1] == 16
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["engine", "engine.lock"]  # no staging left
    again = build(*demo_args(out))
    assert again.returncode == 0 and "nothing to do" in again.stdout

    audio = {}
    for name, flags in (("engine", ["--engine", str(out)]), ("in-process", [])):
        wav = tmp_path / f"{name}.wav"
        said = subprocess.run([*CLI, "say", "Same seed, same speech.", "-o", str(wav), "--seed", "3", *flags,
                               "--set", "codec.noise=false", "--set", "scheduler.adaptive_chunks=false"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
        assert said.returncode == 0, said.stderr
        audio[name] = wav.read_bytes()
    assert len(audio["engine"]) > 10_000 and audio["engine"] == audio["in-process"]


def test_a_pvc_checkpoint_becomes_fp8_serving_weights_with_scales(sources, tmp_path):
    out = tmp_path / "engine"
    result = build(*pvc_args(sources, out, "--set", "scheduler.max_concurrent_sessions=8"))
    assert result.returncode == 0, result.stderr
    with safe_open(str(out / "model" / "serving.safetensors"), "pt") as f:
        names = set(f.keys())
        assert str(f.get_slice("layers.0.attention.wqkv.weight_fp8").get_dtype()) == "F8_E4M3"
    assert "layers.0.attention.wqkv.weight_scale" in names and "layers.0.attention.wqkv.weight" not in names
    assert (out / "model" / "tokenizer.json").exists()
    assert json.loads((out / "model" / "serving.json").read_text())["fp8Scaling"] == "rowwise"
    # FP8 weights on a machine without FP8 are refused at start, naming the precision.
    with pytest.raises(EngineError, match="precision"):
        load_parts(load_config(overrides={"engine.path": str(out), "model.device": "cpu"}))
    with pytest.raises(EngineError, match="precision: engine .* was built for fp8, but model.quantization is none"):
        load_parts(load_config(overrides={"engine.path": str(out), "model.quantization": "none"}))


@pytest.mark.parametrize("change, message", [
    ("vocab", "vocab_size 128256, not Orpheus' 156940"),
    ("shard", "no model.safetensors"),
])
def test_a_bad_checkpoint_exits_2_and_publishes_nothing(sources, tmp_path, change, message):
    model = tmp_path / "orpheus"
    write_checkpoint(model, llama_config(vocab_size=128_256) if change == "vocab" else llama_config())
    if change == "shard":
        (model / "model.safetensors").unlink()
    out = tmp_path / "cache" / "engine"
    result = build(*pvc_args((model, sources[1]), out))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["engine.lock"]


def test_invalid_arguments_exit_2_before_anything_is_written(tmp_path):
    out = tmp_path / "cache" / "engine"
    cases = {
        "fp8 needs a GPU architecture with FP8": demo_args(out, "--precision", "fp8", "--gpu-arch", "sm_86"),
        "needs a revision": demo_args(out, "--model-source", "hub:canopylabs/orpheus-3b-0.1-ft"),
        "must be pvc:PATH, hub:REPO, demo or random:NAME": demo_args(out, "--model-source", "s3://bucket"),
        "should end in the engine hash": demo_args(out, "--engine-hash", "0123456789abcdef"),
        "server settings: scheduler.max_batch_size must be positive": demo_args(
            out, "--set", "scheduler.max_batch_size=0"),
    }
    for expected, argv in cases.items():
        result = build(*argv)
        assert result.returncode == 2 and expected in result.stderr, (expected, result.stderr)
    assert not (tmp_path / "cache").exists()


def test_tensorrt_llm_exits_3_and_publishes_nothing(tmp_path):
    result = build(*demo_args(tmp_path / "engine", "--backend", "tensorrt-llm"))
    assert result.returncode == 3 and "not implemented" in result.stderr
    assert not (tmp_path / "engine").exists()


def test_compile_required_without_the_gpu_exits_5(tmp_path):
    result = build(*demo_args(tmp_path / "engine", "--compile", "required"))
    assert result.returncode == 5 and "--compile required, but no GPU on this machine" in result.stderr
    assert not (tmp_path / "engine").exists()


def test_an_output_that_cannot_be_written_exits_4():
    result = build(*demo_args(Path("/sys/orpheus-tts-test/engine")))  # sysfs: nobody may create a directory
    assert result.returncode == 4 and "cannot write /sys/orpheus-tts-test/engine" in result.stderr, result.stderr


def test_two_builds_racing_for_one_output_publish_it_once(tmp_path):
    out = tmp_path / "engine"
    procs = [subprocess.Popen(build_cmd(*demo_args(out)), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted("nothing to do" in o for o in outputs) == [False, True], outputs
    assert EngineDir(out).manifest["engineHash"]


def test_a_build_killed_halfway_leaves_nothing_complete_and_the_next_succeeds(tmp_path):
    out = tmp_path / "engine"
    proc = subprocess.Popen(build_cmd(*demo_args(out)), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("engine.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob("engine.partial-*")), "the build was not caught halfway"
    assert not (out / COMPLETE).exists()
    with pytest.raises(EngineError, match="no COMPLETE marker|no such directory"):
        EngineDir(out)
    result = build(*demo_args(out))
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("engine.partial-*")) and EngineDir(out).manifest


def test_the_server_refuses_an_unfinished_or_foreign_engine(tmp_path):
    out = tmp_path / "engine"
    assert build(*demo_args(out)).returncode == 0
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "formatVersion": 99}))
    with pytest.raises(EngineError, match="formatVersion 99, this server reads 1"):
        EngineDir(out)
    (out / COMPLETE).unlink()
    served = subprocess.run([*CLI, "say", "Hi.", "-o", str(tmp_path / "x.wav"), "--engine", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert served.returncode != 0 and "no COMPLETE marker" in served.stderr, served.stderr


def test_orpheus_tts_build_engine_is_the_same_builder(tmp_path):
    result = subprocess.run([*CLI, "build-engine", *demo_args(tmp_path / "engine", "--dry-run")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["gpuArch"] == "sm_90" and plan["model"]["kind"] == "demo"
    assert not (tmp_path / "engine").exists()


def test_the_manifest_records_the_lora_pool_the_graphs_are_captured_with(tmp_path):
    """The pool's places and rank are inside the captured decode graphs: an engine built for adapters
    says so, and a server with another pool (or none) differs in those fields, not silently."""
    from orpheus_tts.engine.engine_dir import compiled_settings

    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    assert build(*demo_args(plain)).returncode == 0
    result = build(*demo_args(pooled, "--set", f"adapters.dir={tmp_path / 'not-mounted-at-build'}",
                              "--set", "adapters.max_resident=4", "--set", "adapters.max_rank=16"))
    assert result.returncode == 0, result.stderr
    built = {name: json.loads((path / MANIFEST).read_text())["settings"] for name, path in
             (("plain", plain), ("pooled", pooled))}
    assert (built["plain"]["adapters.places"], built["plain"]["adapters.max_rank"]) == (0, 0)
    assert (built["pooled"]["adapters.places"], built["pooled"]["adapters.max_rank"]) == (4, 16)
    serving = load_config(environ={}, overrides={"adapters.dir": str(tmp_path), "adapters.max_resident": 8})
    assert compiled_settings(serving)["adapters.places"] == 8 and compiled_settings(load_config(
        environ={}))["adapters.places"] == 0
