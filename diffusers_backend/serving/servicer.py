"""One thin method per RPC: protobuf in, plain job to the runtime, protobuf out.

No diffusers logic lives here. Generation failures leave as gRPC status errors (the host
ignores ``Result.success`` there); LoadModel failures leave as ``success=False`` with a
message, which is what the host reads for that call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

import backend_pb2
import backend_pb2_grpc
from diffusers_backend.engine.runtime import ModelRuntime
from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading.spec import LoadSpec, parse_engine_args, parse_options
from diffusers_backend.path_guard import shown
from diffusers_backend.serving.status import grpc_method
from diffusers_backend.tasks.jobs import ImageJob, UpscaleJob, VideoJob

log = logging.getLogger(__name__)


def spec_from_options(request: Any) -> LoadSpec:
    """Translate ``ModelOptions`` into a :class:`LoadSpec` (raises LoadError on bad values)."""
    options, warnings = parse_options(list(request.Options))
    return LoadSpec(
        model=request.Model,
        model_file=request.ModelFile,
        model_path=request.ModelPath,
        pipeline_type=request.PipelineType,
        scheduler_type=request.SchedulerType,
        cuda=request.CUDA,
        f16=request.F16Memory,
        dtype=request.DType,
        low_vram=request.LowVRAM,
        img2img=request.IMG2IMG,
        cfg_scale=request.CFGScale,
        clip_skip=request.CLIPSkip,
        clip_model=request.CLIPModel,
        clip_subfolder=request.CLIPSubfolder,
        controlnet=request.ControlNet,
        lora_adapter=request.LoraAdapter,
        lora_base=request.LoraBase,
        lora_scale=request.LoraScale,
        lora_adapters=tuple(request.LoraAdapters),
        lora_scales=tuple(request.LoraScales),
        quantization=request.Quantization,
        tensor_parallel_size=request.TensorParallelSize,
        threads=request.Threads,
        seed=request.Seed,
        options=options,
        engine_args=parse_engine_args(request.EngineArgs),
        warnings=tuple(warnings),
    )


class _CancelProbe:
    """A cheap check the pipeline's step callback and block hooks run: has the client gone?
    ``time_left`` tells admission the seconds before the client's deadline (None: none)."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def __call__(self) -> bool:
        return not self._context.is_active()

    def time_left(self) -> float | None:
        remaining = self._context.time_remaining()
        return None if remaining is None or remaining > 1e8 else float(remaining)


def _cancel_probe(context: grpc.ServicerContext) -> Callable[[], bool]:
    return _CancelProbe(context)


class BackendServicer(backend_pb2_grpc.BackendServicer):
    """The ``backend.Backend`` service."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def Health(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC method names
        return backend_pb2.Reply(message=b"OK")

    @grpc_method
    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        total, breakdown = self.runtime.memory()
        return backend_pb2.StatusResponse(
            state=int(self.runtime.state),
            memory=backend_pb2.MemoryUsageData(total=total, breakdown=breakdown),
        )

    @grpc_method
    def Free(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        had_model = self.runtime.free()
        message = "model freed" if had_model else "no model was loaded"
        return backend_pb2.Result(message=message, success=True)

    @grpc_method
    def LoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            spec = spec_from_options(request)
            loaded = self.runtime.load(spec)
        except BackendError as exc:
            log.warning("LoadModel %s failed: %s", shown(request.Model), short_message(exc))
            return backend_pb2.Result(message=short_message(exc), success=False)
        except Exception as exc:  # noqa: BLE001 - the host reads Result for LoadModel
            log.exception("LoadModel %s failed", shown(request.Model))
            error = LoadError(f"could not load {shown(request.Model)}: {short_message(exc)}")
            return backend_pb2.Result(message=str(error), success=False)
        message = (f"loaded {spec.model or spec.model_file} as {loaded.class_name} "
                   f"on {loaded.device} ({loaded.dtype_name}) in {loaded.load_seconds:.2f}s")
        for warning in loaded.warnings:
            log.warning("LoadModel %s: %s", spec.model or spec.model_file, warning)
        if loaded.warnings:
            message += "; warnings: " + "; ".join(loaded.warnings)
        return backend_pb2.Result(message=message, success=True)

    @grpc_method
    def GenerateImage(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.runtime.check_identity(request.ModelIdentity)
        job = ImageJob(
            prompt=request.positive_prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            steps=request.step,
            seed=request.seed,
            dst=request.dst,
            src=request.src,
            ref_images=tuple(request.ref_images),
            enable_parameters=request.EnableParameters,
            clip_skip=request.CLIPSkip,
        )
        message = self.runtime.generate_image(job, _cancel_probe(context))
        return backend_pb2.Result(message=message, success=True)

    @grpc_method
    def GenerateVideo(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.runtime.check_identity(request.ModelIdentity)
        job = VideoJob(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            start_image=request.start_image,
            end_image=request.end_image,
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            fps=request.fps,
            seed=request.seed,
            cfg_scale=request.cfg_scale,
            steps=request.step,
            dst=request.dst,
            params=dict(request.params),
        )
        message = self.runtime.generate_video(job, _cancel_probe(context))
        return backend_pb2.Result(message=message, success=True)

    @grpc_method
    def UpscaleImage(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        job = UpscaleJob(src=request.src, dst=request.dst, scale=request.scale)
        message = self.runtime.upscale(job, _cancel_probe(context))
        return backend_pb2.Result(message=message, success=True)
