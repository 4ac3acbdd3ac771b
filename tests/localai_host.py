"""Requests built the way LocalAI's Go host builds them, from a model YAML (as a dict).

Read from LocalAI's host code (2026-11), not from what we would like it to send:

* ``core/backend/options.go`` (``grpcModelOpts``, ``getSeed``): ``ModelOptions`` from the YAML;
  ``Seed`` is the YAML's seed, or ``rand.Int32()`` drawn once per load when it has none (or -1).
* ``core/config/generic_defaults.go``: a YAML without ``seed`` gets ``seed = -1``.
* ``core/http/endpoints/openai/image.go``: ``seed`` is the YAML's (so -1 when unset), ``step``
  the YAML's or 15, the prompt split on ``|`` into positive/negative, ``dst`` a temp file the
  host has already created (``b64NNNN`` renamed to ``.png``), ``src`` the first input image,
  ``ModelIdentity`` the YAML's ``parameters.model``, ``CLIPSkip`` and ``EnableParameters``
  copied from the YAML's ``diffusers`` block into every request.
* ``core/http/endpoints/openai/inpainting.go``: ``src`` a JSON file ``{"image", "mask_image"}``
  (base64), ``ref_images = [picture, mask]``, seed ``0``, 512x512, steps 25 by default.
* ``core/backend/video.go``: ``GenerateVideoRequest`` with the request's values, seed ``0``
  when the user sets none.
The loader sets ``ModelFile = ModelPath/Model``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import backend_pb2

RAND_SEED = -1  # generic_defaults.go
DEFAULT_STEP = 15  # image.go, when neither the YAML nor the request sets one


@dataclass
class LocalAIHost:
    """One model YAML as LocalAI loads it, and the requests LocalAI sends for it."""

    yaml: dict[str, Any]
    models_dir: Path
    app_threads: int = 1

    @property
    def diffusers(self) -> dict[str, Any]:
        return self.yaml.get("diffusers", {})

    @property
    def model(self) -> str:
        return self.yaml["parameters"]["model"]

    def load_seed(self) -> int:
        """getSeed: the YAML's seed, else a random int32 drawn for this load."""
        seed = self.yaml.get("seed", RAND_SEED)
        return random.randint(0, 2**31 - 1) if seed == RAND_SEED else int(seed)

    def model_options(self) -> Any:
        """ModelOptions as grpcModelOpts fills them (the fields a diffusers backend reads)."""
        d = self.diffusers
        engine_args = self.yaml.get("engine_args")
        return backend_pb2.ModelOptions(
            Model=self.model,
            ModelFile=str(self.models_dir / self.model),
            ModelPath=str(self.models_dir),
            CUDA=bool(self.yaml.get("cuda") or d.get("cuda")),
            SchedulerType=d.get("scheduler_type", ""),
            PipelineType=d.get("pipeline_type", ""),
            CFGScale=float(self.yaml.get("cfg_scale", 0)),
            LoraAdapter=self.yaml.get("lora_adapter", ""),
            LoraScale=float(self.yaml.get("lora_scale", 0)),
            LoraAdapters=self.yaml.get("lora_adapters", []),
            LoraScales=self.yaml.get("lora_scales", []),
            F16Memory=bool(self.yaml.get("f16", False)),
            LoraBase=self.yaml.get("lora_base", ""),
            IMG2IMG=bool(d.get("img2img", False)),
            CLIPModel=d.get("clip_model", ""),
            CLIPSubfolder=d.get("clip_subfolder", ""),
            Options=self.yaml.get("options", []),
            EngineArgs=json.dumps(engine_args) if engine_args else "",
            CLIPSkip=int(d.get("clip_skip", 0)),
            ControlNet=d.get("control_net", ""),
            Seed=self.load_seed(),
            Quantization=self.yaml.get("quantization", ""),
            DType=self.yaml.get("dtype", ""),
            LowVRAM=bool(self.yaml.get("low_vram", False)),
            Threads=int(self.yaml.get("threads", 0)) or self.app_threads,
        )

    def output_file(self, folder: Path) -> Path:
        """image.go: os.CreateTemp(dir, "b64"), closed, renamed to NAME.png (it exists, empty)."""
        handle, name = tempfile.mkstemp(prefix="b64", dir=folder)
        os.close(handle)
        os.rename(name, name + ".png")
        return Path(name + ".png")

    def image_request(self, prompt: str, dst: Path, *, size: str = "512x512", step: int = 0,
                      src: str = "", ref_images: list[str] | None = None) -> Any:
        """/v1/images/generations: one GenerateImageRequest (n > 1 is n of these)."""
        width, height = (int(v) for v in size.split("x"))
        positive, _, negative = prompt.partition("|")
        steps = step or int(self.yaml.get("step", 0)) or DEFAULT_STEP
        refs = list(ref_images or [])
        return backend_pb2.GenerateImageRequest(
            ModelIdentity=self.model, height=height, width=width, step=steps,
            seed=int(self.yaml.get("seed", RAND_SEED)),
            CLIPSkip=int(self.diffusers.get("clip_skip", 0)),
            positive_prompt=positive, negative_prompt=negative, dst=str(dst),
            src=refs[0] if refs else src,
            EnableParameters=self.diffusers.get("enable_parameters", ""),
            ref_images=refs)

    def inpainting_request(self, prompt: str, picture: Path, mask: Path, folder: Path,
                           dst: Path, *, steps: int = 25, size: int = 512) -> Any:
        """/v1/images/inpainting: JSON src, [picture, mask] as ref_images, seed 0."""
        src = folder / "inpaint_0001.json"
        src.write_text(json.dumps({
            "image": base64.b64encode(picture.read_bytes()).decode(),
            "mask_image": base64.b64encode(mask.read_bytes()).decode()}) + "\n")
        return backend_pb2.GenerateImageRequest(
            ModelIdentity=self.model, height=size, width=size, step=steps, seed=0,
            CLIPSkip=int(self.diffusers.get("clip_skip", 0)), positive_prompt=prompt,
            dst=str(dst), src=str(src),
            EnableParameters=self.diffusers.get("enable_parameters", ""),
            ref_images=[str(picture), str(mask)])

    def video_request(self, prompt: str, dst: Path, **fields: Any) -> Any:
        """/video: what the user left out stays 0 (seed, frames, fps, size, steps)."""
        return backend_pb2.GenerateVideoRequest(ModelIdentity=self.model, prompt=prompt,
                                                dst=str(dst), **fields)
