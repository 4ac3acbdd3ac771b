"""Generate the gRPC stubs (backend_pb2*.py) from backend.proto: the one place that says how.

``python -m diffusers_backend.serving.protogen`` regenerates them when backend.proto is newer than
the stubs (or they are missing); ``--force`` always does. Used by the Makefile, run.sh, the
test suite and the Dockerfile.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "backend.proto"
STUBS = (ROOT / "backend_pb2.py", ROOT / "backend_pb2_grpc.py")


def stale() -> bool:
    """Whether a stub is missing or older than backend.proto."""
    return any(not stub.exists() or stub.stat().st_mtime < PROTO.stat().st_mtime
               for stub in STUBS)


def generate(force: bool = False) -> bool:
    """Run protoc (grpcio-tools) when needed; True when stubs were written."""
    if not force and not stale():
        return False
    from grpc_tools import protoc

    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}",
                        f"--grpc_python_out={ROOT}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    return True


if __name__ == "__main__":
    generate(force="--force" in sys.argv[1:])
