"""``python -m diffusers_backend --addr HOST:PORT``: how hosts start this backend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:50051"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusers_backend",
                                     description="LocalAI-compatible diffusers gRPC backend")
    parser.add_argument("--addr", default=DEFAULT_ADDR,
                        help=f"host:port to listen on (default {DEFAULT_ADDR}, loopback only)")
    args = parser.parse_args(argv)
    # The generated stubs (backend_pb2*.py) live at the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diffusers_backend.serving.server import serve

    return serve(args.addr)


if __name__ == "__main__":
    sys.exit(main())
