"""Videos (and their audio track) written atomically as MP4 at ``dst``, whatever its ending."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.media.files import check_output_path, write_atomically


def _frame_to_uint8(frame: Any, index: int) -> np.ndarray:
    """One frame (PIL image or HxW[xC] array, float 0..1 or uint8) as HxWx3 uint8."""
    if isinstance(frame, Image.Image):
        if frame.mode != "RGB":
            frame = frame.convert("RGB")
        return np.asarray(frame, dtype=np.uint8)
    arr = np.asarray(frame)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind in "ui":
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise InvalidArgument(f"video frame {index} has unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise InvalidArgument(
            f"video frame {index} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgument(f"video frame {index} is empty ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def _even_frames(frames: Iterable[Any]) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames padded (edge pixels repeated) to even width and height.

    H.264 with yuv420p needs even dimensions; padding by at most one pixel keeps the
    picture undistorted, unlike rescaling to a multiple of 16.
    """
    first_shape: tuple[int, ...] | None = None
    for index, frame in enumerate(frames):
        arr = _frame_to_uint8(frame, index)
        if first_shape is None:
            first_shape = arr.shape
        elif arr.shape != first_shape:
            raise InvalidArgument(
                f"video frame {index} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is "
                f"{first_shape[1]}x{first_shape[0]}; all frames must be the same size"
            )
        pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        yield arr


def _frame_sequence(frames: Any) -> Sequence[Any]:
    """Accept a list of frames or one (frames, H, W[, C]) array, as pipelines return."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 5 and frames.shape[0] == 1:
            frames = frames[0]
        if frames.ndim not in (3, 4):
            raise InvalidArgument(
                f"video frames array has shape {frames.shape}; expected (frames, H, W[, C])"
            )
        return list(frames)
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise InvalidArgument(f"video frames must be a list of images, got {type(frames).__name__}")
    return list(frames)


def write_video_atomic(frames: Sequence[Any] | np.ndarray, dst: str, fps: int,
                       audio: Any = None, sample_rate: int = 0) -> None:
    """Encode frames as an H.264 MP4 at ``dst``, atomically like write_png_atomic.

    The temp file is renamed onto ``dst`` only once complete. With ``audio`` (a waveform,
    see :func:`audio_samples`) the file gets an AAC track at ``sample_rate`` beside the
    video. Encoding runs in this process (PyAV): starting an ffmpeg process would fork the
    multithreaded gRPC server, which gRPC does not survive reliably.
    """
    path = check_output_path(dst, probe=False)
    seq = _frame_sequence(frames)
    if not seq:
        raise InvalidArgument("no video frames to write")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
        raise InvalidArgument(f"fps must be a positive whole number, got {fps!r}")
    samples = None
    if audio is not None:
        samples = audio_samples(audio)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
                or not 1000 <= sample_rate <= 384_000:
            raise InvalidArgument(f"audio sample rate must be 1000..384000 Hz, got {sample_rate!r}")
    write_atomically(path, ".partial.mp4",
                      lambda tmp: _encode_mp4(tmp, seq, int(fps), samples, int(sample_rate)))


def audio_samples(audio: Any) -> np.ndarray:
    """A waveform as a float32 (channels, samples) array in -1..1, at most 2 channels.

    Accepts what audio-video pipelines return for one video: a torch tensor or numpy array
    shaped (samples,), (channels, samples) or (samples, channels), or a batch of one.
    """
    if hasattr(audio, "detach"):  # a torch tensor (bf16 has no numpy dtype: go via float)
        audio = audio.detach().float().cpu().numpy()
    arr = np.asarray(audio)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"audio has shape {arr.shape} and dtype {arr.dtype}; expected a "
                              "waveform of (channels, samples)")
    if arr.shape[0] > arr.shape[1]:  # (samples, channels)
        arr = arr.T
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(arr[:2], -1.0, 1.0))


def _encode_mp4(tmp: str, frames: Sequence[Any], fps: int, samples: np.ndarray | None,
                sample_rate: int) -> None:
    """Write H.264 video (yuv420p, ``fps``) and, with ``samples``, AAC audio into one MP4."""
    from fractions import Fraction

    import av

    layout = "stereo" if samples is not None and samples.shape[0] == 2 else "mono"
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=Fraction(fps, 1))
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18"}
        sound = None
        if samples is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout=layout)
        for index, arr in enumerate(_even_frames(frames)):
            if index == 0:
                video.height, video.width = arr.shape[:2]
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is None:
            return
        # Planar float in, the encoder's own format and frame size out.
        resampler = av.AudioResampler(format=sound.codec_context.format or "fltp",
                                      layout=layout, rate=sample_rate,
                                      frame_size=sound.codec_context.frame_size or 1024)
        source = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        source.sample_rate = sample_rate
        source.pts = 0
        for frame in [*resampler.resample(source), *resampler.resample(None)]:
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


