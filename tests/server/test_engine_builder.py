"""`python -m engine_jobs.build`, as the build Job runs it: beside the server tests, because the
builder validates checkpoints with the server's loader (torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from orpheus_tts import orpheus

REPO_ROOT = Path(__file__).resolve().parents[2]


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine_jobs.build", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def write_llama_checkpoint(directory: Path, vocab_size: int = orpheus.VOCAB_SIZE) -> None:
    """A tiny Llama in the Hugging Face layout (config.json + model.safetensors), tied head."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(0)
    weights = LlamaForCausalLM(config).to(torch.bfloat16).state_dict()
    weights.pop("lm_head.weight")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config.to_dict()))


def checkpoint(root: Path) -> tuple[Path, Path]:
    model, snac = root / "models" / "orpheus", root / "models" / "snac"
    (model / "sub").mkdir(parents=True)
    snac.mkdir(parents=True)
    write_llama_checkpoint(model)
    (model / "sub" / "tokenizer.json").write_text("{}")
    (snac / "config.json").write_text("{}")
    (snac / "pytorch_model.bin").write_bytes(b"\0" * 64)
    return model, snac


def files_and_bytes(directory: Path) -> tuple[list[str], int]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return [str(p.relative_to(directory)) for p in files], sum(p.stat().st_size for p in files)


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
    assert (manifest["model"]["files"], manifest["model"]["bytes"]) == files_and_bytes(model)
    assert manifest["model"]["files"] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
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


def test_a_checkpoint_the_server_could_not_load_fails_the_build(tmp_path):
    model, snac = checkpoint(tmp_path)
    out = tmp_path / "cache" / "0123456789abcdef"
    save_file({"model.embed_tokens.weight": torch.zeros(orpheus.VOCAB_SIZE, 16)}, str(model / "model.safetensors"))
    result = build(*args(model, snac, out))
    assert result.returncode == 2 and "the server could not load this checkpoint" in result.stderr, result.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # nor a half-copied staging folder


def test_a_corrupt_weights_file_is_refused_as_the_checkpoints_fault(tmp_path):
    model, snac = checkpoint(tmp_path)
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    result = build(*args(model, snac, tmp_path / "cache" / "0123456789abcdef"))
    assert result.returncode == 2 and "the server could not load this checkpoint" in result.stderr, result.stderr


def test_a_checkpoint_without_the_orpheus_vocabulary_fails_the_build(tmp_path):
    model, snac = checkpoint(tmp_path)
    write_llama_checkpoint(model, vocab_size=128_256)
    result = build(*args(model, snac, tmp_path / "cache" / "0123456789abcdef"))
    assert result.returncode == 2 and "not Orpheus' 156940" in result.stderr, result.stderr


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
