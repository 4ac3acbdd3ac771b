"""Bad input, table-driven: every RPC and field, against ONE real server with tiny SD loaded.

Each case asserts the exact status code (or ``success=False`` for LoadModel, which the host
reads that way), a message that names the problem, a quick answer for validation errors,
that no stray file appeared in the output or input folders, that an existing file at
``dst`` is byte-for-byte unchanged, and that the server still answers Health with Status
not ERROR. The module ends with a good generation on the same server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from harness import PNG_MAGIC, BackendProcess, backend_pb2, start_backend
from PIL import Image

VALIDATION_BUDGET_S = 1.0  # "milliseconds" in practice; generous for a loaded 2-core box
TABLE_TIMES: list[float] = []


# --------------------------------------------------------------------------- workspace


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width x height``: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(PNG_MAGIC + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def la_premultiplied_tiff(path: Path) -> Path:
    """A valid TIFF that Pillow opens in mode "La" (grey + premultiplied alpha)."""
    Image.new("LA", (8, 8), (100, 200)).save(path, tiffinfo={338: 2})
    data = path.read_bytes()
    entry = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # ExtraSamples = 2 (unassociated)
    assert data.count(entry) == 1
    path.write_bytes(data.replace(entry, entry[:-2] + b"\x01\x00"))  # 1 = associated -> La
    assert Image.open(path).mode == "La"
    return path


def png_b64(size=(64, 64), color=(10, 20, 30), mode="RGB") -> str:
    import io

    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@dataclass
class Workspace:
    root: Path
    out: Path = field(init=False)
    inputs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.root / "out"
        self.inputs = self.root / "inputs"
        self.out.mkdir()
        self.inputs.mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(self.good)
        self.p("not-image.png").write_text("this is text, not a PNG\n")
        self.p("empty.png").write_bytes(b"")
        self.p("truncated.png").write_bytes(self.good.read_bytes()[:200])
        (self.inputs / "a-folder").mkdir()
        header_only_png(self.p("bomb.png"), 200_000, 200_000)  # Pillow's own bomb guard
        header_only_png(self.p("too-big.png"), 10_000, 10_000)  # our DIFFUSERS_MAX_INPUT_PIXELS
        la_premultiplied_tiff(self.p("la.tif"))
        self.p("a-file").write_text("a regular file used as if it were a folder\n")
        self.p("inpaint-broken.json").write_text('{"image": "abc", "mask_image": ')
        self.p("inpaint-not-b64.json").write_text(
            json.dumps({"image": "!!! not base64 !!!", "mask_image": png_b64(mode="L")}))
        self.p("inpaint-not-image.json").write_text(json.dumps(
            {"image": base64.b64encode(b"plain text").decode(), "mask_image": png_b64(mode="L")}))
        self.p("inpaint-no-mask.json").write_text(json.dumps({"image": png_b64()}))
        self.p("inpaint-size-mismatch.json").write_text(json.dumps(
            {"image": png_b64((64, 64)), "mask_image": png_b64((32, 32), mode="L")}))
        self.p("inpaint-wrong-type.json").write_text(json.dumps({"image": 5, "mask_image": []}))
        # An existing output that failed requests must leave exactly as it is.
        self.keep = self.out / "keep.png"
        Image.new("RGB", (16, 16), (1, 2, 3)).save(self.keep)

    @property
    def good(self) -> Path:
        return self.inputs / "good.png"

    def p(self, name: str) -> Path:
        return self.inputs / name

    def snapshot(self) -> dict[str, str]:
        """Every file under root with its content hash: stray or changed files show up."""
        return {str(f.relative_to(self.root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(self.root.rglob("*")) if f.is_file()}


# --------------------------------------------------------------------------- the table

LOAD_FAILED = "load failed"  # LoadModel answers Result(success=False), status OK


@dataclass(frozen=True)
class Case:
    id: str
    rpc: str  # GenerateImage | GenerateVideo | UpscaleImage | LoadModel
    fields: Callable[[Workspace], dict[str, Any]]
    code: grpc.StatusCode | str
    says: tuple[str, ...]  # substrings the message must contain (case-insensitive)
    quick: bool = True  # validation: answered within VALIDATION_BUDGET_S


def _resolve(ws: Workspace, fixed: dict[str, Any]) -> dict[str, Any]:
    return {k: (v(ws) if callable(v) else v) for k, v in fixed.items()}


def _mk(rpc: str, case_id: str, code, says, quick=True, **fixed) -> Case:
    return Case(case_id, rpc, lambda ws, fixed=fixed: _resolve(ws, fixed), code,
                tuple(says) if isinstance(says, (list, tuple)) else (says,), quick)


IA, NF, FP, PD = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)


def I(case_id, code, says, **fixed):  # noqa: E743 - short name keeps the table readable
    return _mk("GenerateImage", case_id, code, says, **fixed)


def V(case_id, code, says, **fixed):
    return _mk("GenerateVideo", case_id, code, says, **fixed)


def U(case_id, code, says, **fixed):
    return _mk("UpscaleImage", case_id, code, says, **fixed)


def L(case_id, says, **fixed):
    return _mk("LoadModel", case_id, LOAD_FAILED, says, quick=False, **fixed)


def _inp(name):
    return lambda ws: str(ws.p(name))


_KEEP = {"dst": lambda ws: str(ws.keep)}  # failing requests aimed at an existing file

CASES: list[Case] = [
    # -- GenerateImage: size
    I("width-negative", IA, ["width", "-64"], width=-64),
    I("height-negative", IA, ["height", "-1"], height=-1),
    I("both-negative-existing-dst", IA, ["width"], width=-8, height=-8, **_KEEP),
    I("pixels-above-limit", IA, ["DIFFUSERS_MAX_PIXELS"], width=8192, height=8192),
    I("width-absurd", IA, ["DIFFUSERS_MAX_PIXELS"], width=2**31 - 1, height=64),
    I("width-below-multiple", IA, ["width", "minimum"], width=5),
    # -- steps
    I("steps-negative", IA, ["step", "-5"], step=-5),
    I("steps-above-limit", IA, ["DIFFUSERS_MAX_STEPS"], step=100_000),
    I("steps-above-limit-existing-dst", IA, ["DIFFUSERS_MAX_STEPS"], step=501, **_KEEP),
    # -- src
    I("src-missing", NF, ["src", "not found", "missing.png"],
      src=lambda ws: str(ws.inputs / "missing.png")),
    I("src-missing-existing-dst", NF, ["src"], src=lambda ws: str(ws.inputs / "gone.png"),
      **_KEEP),
    I("src-parent-is-file", NF, ["src"], src=lambda ws: str(ws.p("a-file") / "x.png")),
    I("src-folder", IA, ["src", "folder"], src=_inp("a-folder")),
    I("src-not-image", IA, ["src", "not an image"], src=_inp("not-image.png")),
    I("src-empty-file", IA, ["src"], src=_inp("empty.png")),
    I("src-truncated", IA, ["src", "damaged or truncated"], src=_inp("truncated.png")),
    I("src-decompression-bomb", IA, ["src", "too large"], src=_inp("bomb.png")),
    I("src-above-input-limit", IA, ["src", "10000x10000", "limit"], src=_inp("too-big.png")),
    I("src-unsupported-mode", IA, ["src", "unsupported pixel mode", "La"], src=_inp("la.tif")),
    I("src-device-file", IA, ["src", "not a regular file"], src="/dev/null"),
    I("src-nul-byte", IA, ["src", "NUL"], src=lambda ws: str(ws.good) + "\x00.png"),
    # -- ref_images
    I("ref0-missing", NF, ["ref_images[0]", "not found"],
      ref_images=lambda ws: [str(ws.inputs / "nope.png")]),
    I("ref0-not-image", IA, ["ref_images[0]", "not an image"],
      ref_images=lambda ws: [str(ws.p("not-image.png"))]),
    I("ref0-folder", IA, ["ref_images[0]", "folder"],
      ref_images=lambda ws: [str(ws.p("a-folder"))]),
    I("ref1-missing", NF, ["ref_images[1]"],
      src=lambda ws: str(ws.good), ref_images=lambda ws: [str(ws.good), str(ws.inputs / "m.png")]),
    # -- inpainting JSON
    I("inpaint-json-broken", IA, ["not valid JSON"], src=_inp("inpaint-broken.json")),
    I("inpaint-json-not-base64", IA, ["image", "base64"], src=_inp("inpaint-not-b64.json")),
    I("inpaint-json-not-image", IA, ["image", "not an image"], src=_inp("inpaint-not-image.json")),
    I("inpaint-json-no-mask", IA, ["mask_image"], src=_inp("inpaint-no-mask.json")),
    I("inpaint-json-wrong-type", IA, ["base64 string"], src=_inp("inpaint-wrong-type.json")),
    I("inpaint-json-broken-existing-dst", IA, ["not valid JSON"],
      src=_inp("inpaint-broken.json"), **_KEEP),
    # -- dst
    I("dst-empty", IA, ["dst is empty"], dst=""),
    I("dst-blank", IA, ["dst is empty"], dst="   "),
    I("dst-folder", IA, ["dst", "folder"], dst=lambda ws: str(ws.out)),
    I("dst-trailing-slash", IA, ["dst", "folder"], dst=lambda ws: str(ws.out / "new") + "/"),
    I("dst-missing-folder", NF, ["output folder does not exist", "no-such-dir"],
      dst=lambda ws: str(ws.out / "no-such-dir" / "o.png")),
    I("dst-under-a-file", IA, ["not a folder"], dst=lambda ws: str(ws.p("a-file") / "o.png")),
    I("dst-in-proc", PD, ["output folder does not accept new files", "/proc"],
      dst="/proc/diffusers-test-output.png"),
    I("dst-in-sysfs", PD, ["/sys"], dst="/sys/diffusers-test-output.png"),
    I("dst-nul-byte", IA, ["NUL"], dst=lambda ws: str(ws.out / "a\x00b.png")),
    # -- ModelIdentity
    I("identity-mismatch", NF, ["model identity mismatch"], ModelIdentity="some/other-model"),
    I("identity-mismatch-existing-dst", NF, ["model identity mismatch"],
      ModelIdentity="other", **_KEEP),
    # -- GenerateVideo with an image model loaded: the model kind is the first answer, and
    # INVALID_ARGUMENT, never FAILED_PRECONDITION (LocalAI's router reads that as "no model")
    V("video-on-image-model", IA, ["makes images", "GenerateVideo", "load a video pipeline"]),
    V("video-on-image-model-bad-size", IA, ["makes images"], width=-5, num_frames=-3),
    V("video-on-image-model-bad-dst", IA, ["makes images"],
      dst=lambda ws: str(ws.out / "missing" / "v.mp4")),
    V("video-identity-mismatch", NF, ["model identity mismatch"], ModelIdentity="other/video"),
    # -- UpscaleImage (no upscaler loaded: the Lanczos path)
    U("upscale-scale-negative", IA, ["scale", "-2"], scale=-2),
    U("upscale-scale-1000", IA, ["1000", "limit"], scale=1000),
    U("upscale-scale-1000-existing-dst", IA, ["limit"], scale=1000, **_KEEP),
    U("upscale-src-missing", NF, ["src", "not found"], src=lambda ws: str(ws.inputs / "no.png")),
    U("upscale-src-not-image", IA, ["src", "not an image"], src=_inp("not-image.png")),
    U("upscale-src-bomb", IA, ["too large"], src=_inp("bomb.png")),
    U("upscale-src-empty", IA, ["src is empty"], src=""),
    U("upscale-dst-empty", IA, ["dst is empty"], dst=""),
    U("upscale-dst-folder", IA, ["folder"], dst=lambda ws: str(ws.out)),
    U("upscale-dst-missing-folder", NF, ["output folder does not exist"],
      dst=lambda ws: str(ws.out / "nope" / "u.png")),
    U("upscale-dst-in-proc", PD, ["/proc"], dst="/proc/diffusers-upscale.png"),
    # -- LoadModel: success=False with a message; the loaded model keeps serving. (An option
    # without a colon, an unknown call option or scheduler name are not here: LocalAI's
    # backend loads those, so we load them with a warning; see test_host_replay.py.)
    L("load-engineargs-not-json", ["EngineArgs", "JSON"], EngineArgs="{not json"),
    L("load-engineargs-not-object", ["EngineArgs", "object"], EngineArgs="[1, 2]"),
    # Unknown dtype words (torch_dtype:fp12, DType fp7) load with a warning, as LocalAI's
    # backend ignores them: tests/e2e/test_parity_round2.py (item 7) pins that.
    L("load-missing-model", ["not found", "nowhere-model"],
      Model=lambda ws: str(ws.root / "nowhere-model")),
    L("load-empty-model", ["no model given"], Model=""),
    L("load-file-not-checkpoint", ["not a checkpoint"], Model=_inp("not-image.png")),
    L("load-bad-pipeline-type", ["NoSuchPipelineAtAll"], PipelineType="NoSuchPipelineAtAll"),
    L("load-pickle-ckpt-refused", ["pickle", "SAFETENSORS=0"],
      Model=lambda ws: str(_pickle(ws, ".ckpt"))),
    L("load-lora-scales-mismatch", ["lora_scales"], LoraAdapters=["a.safetensors"],
      LoraScales=[0.5, 0.7]),
    L("load-negative-cfg", ["cfg_scale"], CFGScale=-1.0),
    L("load-remote-code", ["DIFFUSERS_ALLOW_REMOTE_CODE"], Options=["trust_remote_code:true"]),
]


def _pickle(ws: Workspace, ext: str) -> Path:
    """A file with a pickle checkpoint's name: refused by name before anything reads it."""
    path = ws.root / "models" / f"model{ext}"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_bytes(b"not really a pickle; SAFETENSORS=1 must refuse it unread")
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("bad-input"))
    _pickle(workspace, ".ckpt")  # created up front so it is part of every snapshot
    return workspace


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("bad-input-server"))
    yield proc
    proc.stop()


@pytest.fixture()
def loaded(server, tiny_sd) -> BackendProcess:
    """The module's server with tiny SD loaded (loads once; failed loads keep it)."""
    if server.status().state != backend_pb2.StatusResponse.READY:
        result = server.load(tiny_sd)
        assert result.success, result.message
    return server


def _defaults(rpc: str, ws: Workspace, case_id: str, tiny_sd: Path) -> dict[str, Any]:
    dst = str(ws.out / f"{case_id}.out")
    if rpc == "GenerateImage":
        return {"positive_prompt": "a red cube", "width": 64, "height": 64, "step": 1,
                "seed": 1, "dst": dst}
    if rpc == "GenerateVideo":
        return {"prompt": "a red cube", "width": 64, "height": 64, "num_frames": 2, "step": 1,
                "dst": dst}
    if rpc == "UpscaleImage":
        return {"src": str(ws.good), "dst": dst, "scale": 2}
    return {"Model": str(tiny_sd)}


def _call(server: BackendProcess, rpc: str, fields: dict[str, Any]):
    stub = server.stub
    if rpc == "GenerateImage":
        return stub.GenerateImage(backend_pb2.GenerateImageRequest(**fields), timeout=60)
    if rpc == "GenerateVideo":
        return stub.GenerateVideo(backend_pb2.GenerateVideoRequest(**fields), timeout=60)
    if rpc == "UpscaleImage":
        return stub.UpscaleImage(backend_pb2.UpscaleImageRequest(**fields), timeout=60)
    return stub.LoadModel(backend_pb2.ModelOptions(**fields), timeout=120)


# --------------------------------------------------------------------------- tests


def test_before_load_generation_is_failed_precondition(server, ws):
    """Runs first (file order) on the unloaded server; makes sure it is unloaded."""
    server.stub.Free(backend_pb2.HealthMessage(), timeout=30)
    before = ws.snapshot()
    for rpc, fields in (
        ("GenerateImage", {"positive_prompt": "x", "dst": str(ws.out / "pre.png")}),
        ("GenerateImage", {"positive_prompt": "x", "dst": "", "width": -1}),
        ("GenerateVideo", {"prompt": "x", "dst": str(ws.out / "pre.mp4")}),
    ):
        with pytest.raises(grpc.RpcError) as err:
            _call(server, rpc, fields)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "LoadModel" in err.value.details()
    # Upscale needs no model (Lanczos) and still validates.
    with pytest.raises(grpc.RpcError) as err:
        _call(server, "UpscaleImage", {"src": str(ws.good), "dst": "", "scale": 2})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ws.snapshot() == before
    assert server.status().state == backend_pb2.StatusResponse.UNINITIALIZED


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, loaded: BackendProcess, ws: Workspace, tiny_sd: Path):
    fields = _defaults(case.rpc, ws, case.id, tiny_sd)
    fields.update(case.fields(ws))
    before = ws.snapshot()
    started = time.perf_counter()
    if case.code == LOAD_FAILED:
        result = _call(loaded, case.rpc, fields)
        message = result.message
        assert not result.success, f"{case.id}: LoadModel succeeded: {message}"
    else:
        with pytest.raises(grpc.RpcError) as err:
            _call(loaded, case.rpc, fields)
        message = err.value.details()
        assert err.value.code() == case.code, f"{case.id}: {err.value.code()} {message}"
    elapsed = time.perf_counter() - started
    TABLE_TIMES.append(elapsed)
    for text in case.says:
        assert text.lower() in message.lower(), f"{case.id}: {text!r} not in {message!r}"
    assert "Traceback" not in message and len(message) < 600
    if case.quick:
        assert elapsed < VALIDATION_BUDGET_S, f"{case.id} took {elapsed:.2f}s"
    # Nothing written, nothing removed, nothing changed (existing dst included).
    assert ws.snapshot() == before
    # Still serving, and a failed LoadModel kept the model loaded.
    assert loaded.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
    assert loaded.status().state == backend_pb2.StatusResponse.READY


def test_very_long_prompt_is_truncated_not_refused(loaded, ws):
    dst = ws.out / "long-prompt.png"
    prompt = " ".join(f"word{i}" for i in range(3000))
    result = loaded.image(dst, positive_prompt=prompt, negative_prompt=prompt, step=1, seed=3)
    assert result.success
    assert dst.read_bytes()[:8] == PNG_MAGIC
    log = loaded.log().lower()
    assert "truncated" in log, "the server should log that the prompt was truncated"
    dst.unlink()


def test_size_not_a_multiple_is_snapped_and_said(loaded, ws):
    dst = ws.out / "snapped.png"
    result = loaded.image(dst, width=70, height=50, step=1, seed=4)
    assert "snapped from 70x50 to 64x48" in result.message
    assert Image.open(dst).size == (64, 48)
    dst.unlink()


def test_server_still_serves_after_the_table(loaded, ws):
    """The module's last word: Health, Status READY, and a good generation."""
    assert loaded.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
    assert loaded.status().state == backend_pb2.StatusResponse.READY
    dst = ws.out / "final.png"
    result = loaded.image(dst, seed=5, width=64, height=48, step=2)
    assert result.success
    assert Image.open(dst).size == (64, 48)
    # The existing file survived every failing request aimed at it.
    assert Image.open(ws.keep).getpixel((0, 0)) == (1, 2, 3)
    leftovers = sorted(p.name for p in ws.out.iterdir())
    assert leftovers == ["final.png", "keep.png"], leftovers
    assert len(CASES) >= 40
    if TABLE_TIMES:
        print(f"\nbad-input table: {len(TABLE_TIMES)} cases, {sum(TABLE_TIMES):.2f}s in RPCs, "
              f"slowest {max(TABLE_TIMES):.2f}s")
