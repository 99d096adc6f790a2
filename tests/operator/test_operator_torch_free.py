"""The operator stays free of torch: it runs in a small control-plane image without the server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Blocks the server stack, then imports every module of the package; prints what it imported.
IMPORT_ALL_WITHOUT_TORCH = textwrap.dedent("""
    import importlib, pkgutil, sys
    for blocked in ("torch", "orpheus_tts", "engine_jobs"):
        sys.modules[blocked] = None  # `import torch` now raises ImportError
    import orpheus_operator
    names = sorted(m.name for m in pkgutil.iter_modules(orpheus_operator.__path__, "orpheus_operator."))
    for name in names:
        importlib.import_module(name)
    print(" ".join(names))
""")


def test_every_operator_module_imports_where_torch_and_the_server_cannot():
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL_WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert {"orpheus_operator.handlers", "orpheus_operator.model_facts", "orpheus_operator.profiles"} <= set(imported)
