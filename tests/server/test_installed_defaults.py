"""An installed wheel (or an image built from one) holds the packages it should and has the
same defaults as a checkout.

The defaults once lived in a YAML file found beside the repository, so an install from a wheel,
which has no such file, silently served other values. The wheel is built and installed for
real, and a separate interpreter that sees only the install (and PyYAML) loads the config.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ("server", "engine_jobs", "bench/orpheus_bench")  # what pyproject.toml's packages.find looks in

_LOAD_DEFAULTS = """
import dataclasses, json
import orpheus_tts.config as config
print(json.dumps({"module": config.__file__, "config": dataclasses.asdict(config.load_config(environ={}))}))
"""


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   cwd=cwd, check=True, timeout=120)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The distribution built as a wheel from a copy of what it packages, and installed into a
    folder of its own."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so the build leaves nothing (build/, egg-info) in the checkout.
    source = tmp_path / "source"
    for folder in PACKAGED:
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    _pip("wheel", "--no-deps", ".", "-w", str(tmp_path / "wheels"), cwd=source)
    [wheel] = (tmp_path / "wheels").glob("orpheus_tts-*.whl")
    target = tmp_path / "installed"
    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp_path)
    return target


def test_the_wheel_holds_the_server_the_engine_builder_and_the_benchmarks(installed_wheel):
    packages = {p.name for p in installed_wheel.iterdir() if (p / "__init__.py").exists()}
    assert packages == {"orpheus_tts", "engine_jobs", "orpheus_bench"}


def test_a_wheel_installed_without_the_repository_loads_the_documented_defaults(installed_wheel, tmp_path):
    target = installed_wheel
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ORPHEUS_TTS__"))}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(Path(yaml.__file__).parents[1])])
    # -S: no site-packages, so no editable install of the checkout can answer the import.
    out = subprocess.run([sys.executable, "-S", "-c", _LOAD_DEFAULTS], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = json.loads(out)

    assert Path(loaded["module"]).resolve().is_relative_to(target.resolve())
    assert loaded["config"] == yaml.safe_load((REPO_ROOT / "config" / "example.yaml").read_text())
