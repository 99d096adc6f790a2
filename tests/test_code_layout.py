"""The layout rules a newcomer relies on, checked on the source (no imports, no torch).

Imports point one way (codec/ and model/ never reach into engine/; api/ sees only the engine's
public front and the errors module), one module owns session state, and no hand-written file
grows past what can be read in one sitting.
"""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "server" / "orpheus_tts"
GENERATED = {PACKAGE / "api" / "gen"}
MAX_LINES = 400
SOURCE_DIRS = ["server", "operator", "engine_jobs", "bench", "tools", "tests"]


def _python_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py"))
            if not any(g in p.parents for g in GENERATED) and ".venv" not in p.parts]


def _imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at its top or inside a function."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("room", ["codec", "model"])
def test_codec_and_model_never_import_the_engine(room):
    offenders = {str(p.relative_to(REPO_ROOT)): m for p in _python_files(PACKAGE / room)
                 for m in _imported_modules(p) if _within(m, "orpheus_tts.engine")}
    assert offenders == {}


def test_the_api_sees_only_the_engine_front_and_the_errors_module():
    inside = ("orpheus_tts.codec", "orpheus_tts.model")
    offenders = {}
    for path in _python_files(PACKAGE / "api"):
        for module in _imported_modules(path):
            if (_within(module, "orpheus_tts.engine") and module != "orpheus_tts.engine") or \
                    any(_within(module, p) for p in inside):
                offenders.setdefault(str(path.relative_to(REPO_ROOT)), []).append(module)
    assert offenders == {}


def test_only_the_scheduler_changes_a_sessions_state():
    writers = set()
    for path in _python_files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) \
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "SessionState":
                writers.add(str(path.relative_to(PACKAGE)))
    assert writers == {"engine/scheduler.py"}


def test_no_hand_written_python_file_is_longer_than_a_sitting():
    long = {str(p.relative_to(REPO_ROOT)): n for d in SOURCE_DIRS for p in _python_files(REPO_ROOT / d)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
