"""The one mapping from an exception to the gRPC status and message a host sees
(``serving/status.py``), and the out-of-memory test it relies on (``errors.py``).

Every branch has a test here, so removing or reordering one fails this file. The wrapper
(:func:`grpc_method`) that applies the mapping over gRPC is tested in
tests/e2e/test_status_over_grpc.py.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import grpc
import pytest

from diffusers_backend.errors import (
    MAX_MESSAGE_CHARS,
    BackendError,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    LoadError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    is_out_of_memory,
    short_message,
)
from diffusers_backend.serving.status import status_for

Code = grpc.StatusCode
OOM_ADVICE = ("out of memory while generating; try a smaller size, fewer frames, "
              "or enable low_vram / attention slicing")
# What this machine's allocator really raises when asked for 256 TiB (torch.empty(2**48)).
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
           "memory: you tried to allocate 281474976710656 bytes. Error code 12")


def _no_traceback(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


# -- our own errors ---------------------------------------------------------------------------

OWN_ERRORS = {
    BackendError: Code.INTERNAL,
    InvalidArgument: Code.INVALID_ARGUMENT,
    NotFound: Code.NOT_FOUND,
    FailedPrecondition: Code.FAILED_PRECONDITION,
    ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    PermissionDenied: Code.PERMISSION_DENIED,
    Unauthenticated: Code.UNAUTHENTICATED,
    Cancelled: Code.CANCELLED,
    Unavailable: Code.UNAVAILABLE,
    LoadError: Code.INVALID_ARGUMENT,
}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("cls", OWN_ERRORS, ids=lambda cls: cls.__name__)
def test_each_own_error_reaches_the_host_as_its_status_with_its_first_line(cls):
    error = cls("width 65 is not a multiple of 8; use 64 or 72\n  details for the log")
    assert status_for(error) == (OWN_ERRORS[cls], "width 65 is not a multiple of 8; use 64 or 72")


def test_every_own_error_class_names_a_real_grpc_status():
    """A misspelt ``status`` would raise inside the catch-all, and the host would get UNKNOWN."""
    classes = [BackendError, *_subclasses(BackendError)]
    assert set(OWN_ERRORS) <= set(classes)
    for cls in classes:
        code, _ = status_for(cls("x"))
        assert code.name == cls.status and code is not Code.UNKNOWN, cls


def test_an_own_resource_error_keeps_its_message_not_the_oom_advice():
    """Our errors are checked first: a size limit says which limit, not "out of memory"."""
    error = ResourceExhausted("4096x4096 is above DIFFUSERS_MAX_PIXELS (1048576 pixels)")
    assert status_for(error) == (Code.RESOURCE_EXHAUSTED, str(error))


# -- out of memory ----------------------------------------------------------------------------

class OutOfResources(Exception):  # noqa: N818 - Triton's name, which is the point
    """Triton's shared-memory error, by name: Triton is not installed on this CPU machine."""


def test_a_real_cpu_allocation_failure_is_out_of_memory():
    import torch

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**48, dtype=torch.uint8)  # 256 TiB
    assert is_out_of_memory(caught.value)
    assert status_for(caught.value) == (Code.RESOURCE_EXHAUSTED, OOM_ADVICE)


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError(CPU_OOM),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("HIP OUT OF MEMORY"),
    OutOfResources("out of resource: shared memory, Required: 98304, Hardware limit: 65536"),
], ids=["MemoryError", "cpu-allocator", "cuda-text", "upper-case", "triton-by-name"])
def test_out_of_memory_is_resource_exhausted_with_advice(error):
    assert is_out_of_memory(error)
    assert status_for(error) == (Code.RESOURCE_EXHAUSTED, OOM_ADVICE)


def test_torch_out_of_memory_error_is_recognised_by_its_class_name():
    import torch

    error = torch.OutOfMemoryError("Tried to allocate 20.00 MiB (GPU 0; 79.3 GiB total)")
    assert is_out_of_memory(error)
    assert status_for(error)[0] is Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("error", [
    RuntimeError("Expected all tensors to be on the same device"),
    ValueError("out of memory budget for this size"),  # the words, but not a RuntimeError
    OSError("can't allocate memory for the socket buffer"),
], ids=["other-runtime-error", "value-error", "os-error"])
def test_other_errors_are_not_out_of_memory(error):
    assert not is_out_of_memory(error)
    assert status_for(error)[0] is not Code.RESOURCE_EXHAUSTED


# -- library errors ---------------------------------------------------------------------------

def test_a_missing_file_is_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "lora.safetensors"
    with pytest.raises(FileNotFoundError) as caught:
        missing.open()
    assert status_for(caught.value) == (Code.NOT_FOUND, f"file not found: {missing}")


def test_a_missing_file_without_a_path_is_not_found_with_its_text():
    error = FileNotFoundError("no model index in the folder\nsearched: a, b")
    assert status_for(error) == (Code.NOT_FOUND, "file not found: no model index in the folder")


def test_a_permission_error_is_permission_denied_naming_the_path():
    error = PermissionError(13, "Permission denied", "/models/out.png")
    assert status_for(error) == (Code.PERMISSION_DENIED, "permission denied: /models/out.png")


def test_a_path_os_error_met_in_a_library_is_the_users_to_fix(tmp_path):
    """A real ENAMETOOLONG (a 300-character file name) is INVALID_ARGUMENT naming the
    problem; ENOSPC is RESOURCE_EXHAUSTED; an OS error about no path of the request (EIO)
    stays INTERNAL."""
    with pytest.raises(OSError) as caught:
        (tmp_path / ("x" * 300 + ".png")).open("wb")
    code, message = status_for(caught.value)
    assert code is Code.INVALID_ARGUMENT and "name too long" in message
    full = OSError(errno.ENOSPC, "No space left on device", "/out/a.png")
    assert status_for(full)[0] is Code.RESOURCE_EXHAUSTED
    assert status_for(OSError(errno.EIO, "Input/output error"))[0] is Code.INTERNAL


def test_a_library_value_error_is_invalid_argument():
    with pytest.raises(ValueError) as caught:
        int("abc")  # what parsing a bad option value raises
    assert status_for(caught.value) == (
        Code.INVALID_ARGUMENT, "invalid request: invalid literal for int() with base 10: 'abc'")


def test_a_library_type_error_is_invalid_argument():
    """The issue's example: ``params={"guidance_scale": "abc"}`` reaches ``guidance_scale > 1``."""
    with pytest.raises(TypeError) as caught:
        _ = "abc" > 1.0
    code, message = status_for(caught.value)
    assert code is Code.INVALID_ARGUMENT
    assert message == "invalid request: '>' not supported between instances of 'str' and 'float'"


def test_a_value_error_subclass_is_invalid_argument():
    import json

    with pytest.raises(ValueError) as caught:
        json.loads("{not json")
    assert status_for(caught.value)[0] is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("error", [
    AttributeError("'str' object has no attribute 'shape'"),
    KeyError("text_encoder_2"),
    AssertionError(),
], ids=["AttributeError", "KeyError", "AssertionError"])
def test_anything_else_is_internal_naming_the_error_never_unknown(error):
    code, message = status_for(error)
    assert code is Code.INTERNAL
    assert message.startswith(f"{type(error).__name__}: ")
    _no_traceback(message)


# -- messages ---------------------------------------------------------------------------------

def test_short_message_is_the_first_non_blank_line():
    assert short_message(ValueError("\n  first line  \nsecond line")) == "first line"


def test_short_message_of_an_empty_error_is_its_class_name():
    assert short_message(KeyError()) == "KeyError"
    assert status_for(RuntimeError())[1] == "RuntimeError: RuntimeError"


def test_short_message_is_cut_to_the_limit():
    message = short_message(ValueError("x" * (MAX_MESSAGE_CHARS * 3)))
    assert len(message) == MAX_MESSAGE_CHARS and message.endswith("...")
    assert short_message(ValueError("y" * MAX_MESSAGE_CHARS)) == "y" * MAX_MESSAGE_CHARS


def test_no_status_message_carries_a_traceback():
    import traceback

    try:
        raise ValueError("bad value")
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    for cls in (ValueError, RuntimeError, FileNotFoundError, InvalidArgument, AttributeError):
        _no_traceback(status_for(cls(f"it failed\n{text}"))[1])
