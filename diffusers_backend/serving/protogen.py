"""Generate the gRPC stubs (backend_pb2*.py, progress_pb2*.py) from backend.proto and
progress.proto: the one place that says how.

``python -m diffusers_backend.serving.protogen`` regenerates them when a .proto is newer than
its stubs (or they are missing); ``--force`` always does. Used by the Makefile, run.sh, the
test suite and the Dockerfile.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "backend.proto"
STUBS = (ROOT / "backend_pb2.py", ROOT / "backend_pb2_grpc.py")
PROGRESS_PROTO = ROOT / "progress.proto"  # our own Progress service (docs/observability.md)
PROGRESS_STUBS = (ROOT / "progress_pb2.py", ROOT / "progress_pb2_grpc.py")
PROTOS = ((PROTO, STUBS), (PROGRESS_PROTO, PROGRESS_STUBS))


def stale() -> bool:
    """Whether a stub is missing or older than its .proto."""
    return any(not stub.exists() or stub.stat().st_mtime < proto.stat().st_mtime
               for proto, stubs in PROTOS for stub in stubs)


def generate(force: bool = False) -> bool:
    """Run protoc (grpcio-tools) when needed; True when stubs were written."""
    if not force and not stale():
        return False
    from grpc_tools import protoc

    for proto, _ in PROTOS:
        code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}",
                            f"--grpc_python_out={ROOT}", str(proto)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {code})")
    return True


if __name__ == "__main__":
    generate(force="--force" in sys.argv[1:])
