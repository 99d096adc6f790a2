"""`orpheus-operator render` and `crd`, as a person or a GitOps pipeline runs them."""

from __future__ import annotations

import subprocess
import sys

import yaml
from operator_testkit import EXAMPLES, REPO_ROOT


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orpheus_operator.cli", *args], cwd=REPO_ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_render_prints_every_manifest_of_every_voice():
    result = cli("render", "-f", str(EXAMPLES / "voice-rtx4090-conversational.yaml"),
                 "-f", str(EXAMPLES / "voice-h100-longform.yaml"), "-n", "tts")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["namespace"]) for d in docs[:5]] == [
        ("Job", "tts"), ("Deployment", "tts"), ("Service", "tts"), ("HorizontalPodAutoscaler", "tts"), ("PodDisruptionBudget", "tts"),
    ]
    assert len(docs) == 10
    assert "&id" not in result.stdout  # no YAML anchors: readable in review


def test_render_refuses_an_over_budget_voice_with_exit_code_1():
    voice = yaml.safe_load((EXAMPLES / "voice-rtx4090-conversational.yaml").read_text())
    voice["spec"]["sessionsPerPod"] = 500
    result = cli("render", "-f", "-", stdin=yaml.safe_dump(voice))
    assert result.returncode == 1
    assert "InsufficientGPUMemory: 500 sessions x 2048 tokens" in result.stderr


def test_render_says_when_a_file_holds_no_voice(tmp_path):
    other = tmp_path / "pod.yaml"
    other.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    result = cli("render", "-f", str(other))
    assert result.returncode == 2 and "no OrpheusVoice" in result.stderr


def test_crd_command_prints_the_committed_crd():
    result = cli("crd")
    committed = (REPO_ROOT / "operator" / "crds" / "orpheusvoices.yaml").read_text()
    assert result.returncode == 0 and result.stdout == committed
