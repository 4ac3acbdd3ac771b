"""Helpers shared by the ``test_features_*`` modules (not a test module itself).

The feature tests drive a real server through gRPC. Most use the session's shared
``backend`` server and free the model after each test (``free_after`` below), so one
server process serves every module; a module that needs other environment variables
starts its own.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from harness import BackendProcess, backend_pb2, mean_diff, pixels, same  # noqa: F401 - re-exported
from PIL import Image


def load_ok(server: BackendProcess, model, **fields) -> backend_pb2.Result:
    result = server.load(model, **fields)
    assert result.success, result.message
    return result


def free(server: BackendProcess) -> None:
    """Free the model, if a LoadModel has run on this server (loaded or failed)."""
    if server.status().state == backend_pb2.StatusResponse.UNINITIALIZED:
        return
    server.stub.Free(backend_pb2.HealthMessage(), timeout=30, metadata=server.metadata)


def rpc_error(call) -> grpc.RpcError:
    """Run ``call`` and return the gRPC error it must raise."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def log_since(server: BackendProcess, offset: int) -> str:
    return server.log()[offset:]


def write_image(path: Path, size=(64, 64), seed: int = 0, color=None) -> Path:
    """A PNG: a solid colour, or seeded random noise (so every pixel is distinct)."""
    if color is not None:
        Image.new("RGB", size, color).save(path)
    else:
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def inpaint_request(folder: Path, picture: Path,
                    box: tuple[int, int, int, int] = (16, 16, 48, 48)
                    ) -> tuple[Path, Path, np.ndarray]:
    """The host's inpainting request for ``picture``: a JSON ``src`` holding it and a mask
    that is white (repaint) inside ``box`` (left, top, right, bottom).

    Returns the JSON path, the mask PNG path and the masked area as a boolean array.
    """
    import base64
    import json

    with Image.open(picture) as image:
        size = image.size
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask_path = folder / "mask.png"
    mask.save(mask_path)
    src = folder / "inpaint.json"
    src.write_text(json.dumps({
        "image": base64.b64encode(picture.read_bytes()).decode(),
        "mask_image": base64.b64encode(mask_path.read_bytes()).decode()}))
    return src, mask_path, np.asarray(mask) > 127
