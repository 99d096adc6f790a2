"""The Inductor configuration a built engine's cache keys are computed from is the same on a build
machine (with a C++ compiler in $CXX) and on a serving one (none): real subprocesses, each with
its own environment, as the builder and the server are."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, torch._inductor.config as c
from orpheus_tts.engine.compile_settings import apply_compile_settings
apply_compile_settings()
print(json.dumps({k: repr(v) for k, v in c.save_config_portable(ignore_private_configs=False).items()}))
"""


def inductor_config(env_cxx: str | None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    if env_cxx is not None:
        env["CXX"] = env_cxx
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cache_key_config_does_not_depend_on_the_machines_compiler():
    builder, server = inductor_config("/usr/local/bin/g++-13"), inductor_config(None)
    assert {k for k in builder if builder[k] != server.get(k)} == set()
    assert builder["use_static_cuda_launcher"] == "False"
