"""Generate the gRPC Python code from `protos/` (run by `make proto`; a test checks it is current).

The proto is compiled under the virtual path `orpheus_tts/api/gen/`, so the generated modules
import each other as `orpheus_tts.api.gen.*` instead of as a top-level `orpheus` package.
Needs `grpcio-tools` (the test extra); the server itself only imports the output.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO = REPO_ROOT / "protos" / "orpheus" / "tts" / "v1" / "tts.proto"
PACKAGE_DIR = "orpheus_tts/api/gen"  # where the modules land below the output root
GENERATED = ("tts_pb2.py", "tts_pb2.pyi", "tts_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under `out_root/orpheus_tts/api/gen/` and return their paths."""
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc",
        f"--proto_path={PACKAGE_DIR}={PROTO.parent}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO),
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} on {PROTO}")
    return [out_root / PACKAGE_DIR / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "server"):
        print(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
