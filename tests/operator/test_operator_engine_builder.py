"""`python -m engine_jobs.build`, as the build Job runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from operator_testkit import REPO_ROOT


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine_jobs.build", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def checkpoint(root: Path) -> tuple[Path, Path]:
    model, snac = root / "models" / "orpheus", root / "models" / "snac"
    (model / "sub").mkdir(parents=True)
    snac.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1024)
    (model / "sub" / "tokenizer.json").write_text("{}")
    (snac / "config.json").write_text("{}")
    (snac / "pytorch_model.bin").write_bytes(b"\0" * 64)
    return model, snac


def args(model: Path, snac: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-source", f"pvc:{model}", "--snac-source", f"pvc:{snac}", "--precision", "fp8",
            "--backend", "torch", "--gpu-arch", "sm_89", "--engine-hash", out.name, "--output", str(out), *extra]


def test_pvc_checkpoint_is_laid_out_with_a_manifest_and_a_rerun_is_a_cache_hit(tmp_path):
    model, snac = checkpoint(tmp_path)
    out = tmp_path / "cache" / "0123456789abcdef"
    first = build(*args(model, snac, out))
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "engine.json").read_text())
    assert manifest["complete"] is True and manifest["engineHash"] == "0123456789abcdef"
    assert manifest["model"]["files"] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert manifest["model"]["bytes"] == 1024 + 4
    assert (out / "snac" / "pytorch_model.bin").read_bytes() == b"\0" * 64
    assert list((tmp_path / "cache").iterdir()) == [out]  # no staging directory left behind

    again = build(*args(model, snac, out))
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_invalid_arguments_fail_before_anything_is_written(tmp_path):
    model, snac = checkpoint(tmp_path)
    out = tmp_path / "cache" / "0123456789abcdef"
    cases = {
        "fp8 needs one of": args(model, snac, out, "--gpu-arch", "sm_86"),
        "needs a revision": ["--model-source", "hub:canopylabs/orpheus-3b-0.1-ft", "--precision", "bf16",
                             "--backend", "torch", "--gpu-arch", "sm_80", "--output", str(out)],
        "must be hub:REPO or pvc:PATH": ["--model-source", "s3://bucket", "--precision", "bf16",
                                         "--backend", "torch", "--gpu-arch", "sm_80", "--output", str(out)],
        "should end in the engine hash": args(model, snac, tmp_path / "cache" / "other", "--engine-hash", "0123456789abcdef"),
    }
    for expected, argv in cases.items():
        result = build(*argv)
        assert result.returncode == 2 and expected in result.stderr, (expected, result.stderr)
    assert not (tmp_path / "cache").exists()


def test_missing_codec_weights_are_reported(tmp_path):
    model, snac = checkpoint(tmp_path)
    (snac / "pytorch_model.bin").unlink()
    result = build(*args(model, snac, tmp_path / "cache" / "0123456789abcdef"))
    assert result.returncode == 2 and "lacks pytorch_model.bin" in result.stderr


def test_tensorrt_llm_is_declared_not_implemented_and_left_incomplete(tmp_path):
    model, snac = checkpoint(tmp_path)
    out = tmp_path / "cache" / "0123456789abcdef"
    argv = args(model, snac, out)
    argv[argv.index("torch")] = "tensorrt-llm"
    result = build(*argv)
    assert result.returncode == 3 and "not implemented yet" in result.stderr
    assert json.loads((out / "engine.json").read_text())["complete"] is False


def test_dry_run_prints_the_plan(tmp_path):
    model, snac = checkpoint(tmp_path)
    result = build(*args(model, snac, tmp_path / "0123456789abcdef", "--dry-run"))
    assert result.returncode == 0
    assert json.loads(result.stdout)["gpuArch"] == "sm_89"
    assert not (tmp_path / "0123456789abcdef").exists()
