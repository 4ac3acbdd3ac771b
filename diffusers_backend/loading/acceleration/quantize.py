"""Weight quantization of the denoiser with torchao (``quantize:int8wo`` / ``quantize:fp8``).

``int8wo`` stores every Linear weight of the UNet/transformer as int8 with a per-channel
scale (about half the memory of bf16, a quarter of fp32) and runs on CPU and GPU.
``fp8`` (float8 weights and dynamically quantized float8 activations) needs a CUDA GPU with
compute capability 8.9 or newer (Ada, Hopper, Blackwell); elsewhere it is refused.

A denoiser that is already quantized (a ``.gguf`` file, the ``quantization`` field's
optimum-quanto weights, a checkpoint with a quantization config) is refused: quantizing
quantized weights again is not something torchao does.
"""

from __future__ import annotations

from typing import Any

from diffusers_backend.errors import LoadError

FP8_MIN_CAPABILITY = (8, 9)


_GGUF_WHY = ("its weights are GGUF-quantized already (load the full-precision transformer "
             "to quantize it with torchao, or serve the .gguf as it is)")


def _already_quantized(module: Any, quantization_field: str) -> str:
    """Why ``module`` counts as quantized already ("" when it does not)."""
    if quantization_field.strip().lower() == "gguf":
        return _GGUF_WHY
    if quantization_field.strip():
        return f"the model's quantization field ({quantization_field}) already quantizes it"
    quantizer = getattr(module, "hf_quantizer", None)
    if quantizer is not None:
        method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")
        method = getattr(method, "value", method)
        if str(method).lower() == "gguf":
            return _GGUF_WHY
        return f"its weights are quantized already ({method or type(quantizer).__name__})"
    return ""


def fp8_refusal(device: str) -> str:
    """Why fp8 cannot run on ``device`` ("" when it can)."""
    if not device.startswith("cuda"):
        return f"fp8 needs a CUDA GPU with compute capability >= 8.9; this model is on {device}"
    import torch

    index = torch.device(device).index or 0
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return (f"fp8 needs a GPU with compute capability >= 8.9 (Ada, Hopper or newer); "
                f"{name} has {capability[0]}.{capability[1]}; use quantize:int8wo")
    return ""


def _device_of(module: Any) -> str:
    """Where the module's weights are (placement already ran)."""
    parameter = next(iter(module.parameters()), None)
    return "cpu" if parameter is None else str(parameter.device)


def quantize_denoiser(pipe: Any, mode: str, quantization_field: str = "") -> str:
    """Quantize the pipeline's UNet/transformer in place; a note for the load log."""
    name, module = next(((n, getattr(pipe, n)) for n in ("transformer", "unet")
                         if getattr(pipe, n, None) is not None), ("", None))
    if module is None:
        raise LoadError(f"quantize:{mode}: {type(pipe).__name__} has no UNet or transformer")
    why = _already_quantized(module, quantization_field)
    if why:
        raise LoadError(f"quantize:{mode} cannot apply to this {name}: {why}")
    if mode == "fp8":
        why = fp8_refusal(_device_of(module))
        if why:
            raise LoadError(f"quantize:fp8 refused: {why}")
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as exc:
        raise LoadError(f"quantize:{mode} needs torchao (pip install torchao; see "
                        f"requirements.txt): {exc}") from exc
    config = Int8WeightOnlyConfig() if mode == "int8wo" else \
        Float8DynamicActivationFloat8WeightConfig()
    try:
        quantize_(module, config)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise LoadError(f"quantize:{mode} failed on the {name}: {exc}") from exc
    return f"{name} quantized ({mode}, torchao: {quantized_linear_count(module)} Linear layers)"


def quantized_linear_count(module: Any) -> int:
    """How many Linear layers of ``module`` hold torchao-quantized weights (for tests/logs)."""
    import torch

    count = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            weight_type = type(layer.weight).__module__
            if weight_type.startswith("torchao"):
                count += 1
    return count
