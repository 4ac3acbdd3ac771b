"""GenerateImage as a task: validated in the request's thread, run on the engine's pipeline
thread (alone or batched), written by an output writer.

Three steps, each in the thread where it is cheapest for the GPU:
* :func:`plan_image` (request thread): every check, the seed, the size, the input images
  decoded. A bad request is refused here in milliseconds, whatever the queue holds.
* :meth:`ImagePlan.run` (pipeline thread): picks txt2img / img2img / inpaint / ControlNet on
  the loaded weights, builds the call and runs it for a whole batch of compatible plans.
* :meth:`ImagePlan.write` (writer thread): pastes the original back outside an inpainting
  mask and writes the PNG atomically while the pipeline thread runs the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers_backend import media, prompts
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading import ip_adapter
from diffusers_backend.loading.pipeline_loader import LoadedPipeline
from diffusers_backend.media.control import preprocess_control
from diffusers_backend.prompts.clip_skip_limits import check_clip_skip_limit
from diffusers_backend.registry.signatures import call_signature
from diffusers_backend.settings import Settings
from diffusers_backend.tasks import references
from diffusers_backend.tasks.call_header import CallHeader
from diffusers_backend.tasks.calls import (
    DEFAULT_IMG2IMG_STRENGTH,
    IsCancelled,
    PictureOutput,
    check_size,
    check_steps,
    option_int,
    pick_seed,
    size_multiple,
    steps_or_default,
)
from diffusers_backend.tasks.jobs import ImageJob
from diffusers_backend.tasks.lora_call import NO_LORAS, LoraSet, applied, plan_loras

_PER_ITEM_KEYS = ("prompt", "negative_prompt", "generator")
# LocalAI's backend gives FluxPipeline calls a 256-token T5 prompt (diffusers: 512); an
# option ``max_sequence_length`` still sets another length.
FLUX_MAX_SEQUENCE_LENGTH = 256


@dataclass
class _Inputs:
    """The request's decoded pictures: none (txt2img), a source (img2img / ControlNet), or an
    inpainting picture and mask."""

    image: Any = None
    mask: Any = None
    control: Any = None  # ControlNet img2img: the control picture beside the source
    note: str = ""  # what the reply says about the references (those left out)
    adapter: Any = None  # the IP-Adapter's picture (first reference) when one is loaded

    @property
    def inpaint(self) -> bool:
        return self.mask is not None


@dataclass(frozen=True)
class CallFacts:
    """What building a plan's call decided on the pipeline thread; the plan itself stays as
    it was validated."""

    steps: int  # the steps the call runs (img2img may raise the request's; see build_call)
    pipeline: str  # the class that runs it: the loaded pipeline or its img2img/inpaint variant
    note: str  # the plan's note, plus what the call changed


@dataclass(frozen=True)
class ImageOutput(PictureOutput):
    """One picture a call made, with the facts of the call that made it."""

    image: Any
    facts: CallFacts

    @property
    def steps(self) -> int:
        return self.facts.steps


@dataclass(eq=False)
class ImagePlan:
    """One validated GenerateImage request: everything but the tensors. Not changed after
    validation: what the pipeline thread decides comes back in :class:`CallFacts`."""

    job: ImageJob
    loaded: LoadedPipeline
    settings: Settings
    width: int
    height: int
    steps: int
    seed: int
    clip_skip: int
    negative: str
    note: str
    inputs: _Inputs = field(default_factory=_Inputs)
    prompt: str | None = None  # the prompt without its LoRA tags (None: the job's)
    loras: LoraSet = NO_LORAS  # the prompt's <lora:...> tags, on for this plan's call only

    @property
    def pixels(self) -> int:
        return (self.width or 512) * (self.height or 512)

    def replan(self, loaded: LoadedPipeline) -> ImagePlan:
        """Validate again against another model (one was loaded while this one waited)."""
        return plan_image(loaded, self.job, self.settings)

    def batch_key(self) -> tuple[Any, ...] | None:
        """Plans with equal keys share one pipeline call; None: this one runs alone.

        Only plain text-to-image batches: prompts, negative prompts and generators become
        per-item lists, so everything else in the call must be equal. Prompt weighting
        (COMPEL, SD_EMBED) turns prompts into embeddings, which do not batch.
        """
        if self.inputs.image is not None or self.settings.compel or self.settings.sd_embed:
            return None
        if ip_adapter.is_loaded(self.loaded.pipe):  # its scale and image are per call
            return None
        return (id(self.loaded), self.width, self.height, self.steps, self.clip_skip,
                bool(self.negative), self.loras.key())

    # -- pipeline thread ---------------------------------------------------------------
    @staticmethod
    def run(batch: list[ImagePlan], variants: Any, is_cancelled: IsCancelled) -> list[Any]:
        """One pipeline call for plans of equal batch keys (or one plan); one image each."""
        first = batch[0]  # a batch shares its LoRA set (batch_key)
        with applied(first.loaded, first.loras, first.settings.safetensors_only):
            calls = [plan.build_call(variants) for plan in batch]
            pipe, call, _ = calls[0]
            call = dict(call)
            if len(batch) > 1:
                for key in _PER_ITEM_KEYS:
                    if key in call:
                        call[key] = [item_call[key] for _, item_call, _ in calls]
            images = pipe(**CallHeader.of(pipe).cancellable(call, is_cancelled)).images
        return [ImageOutput(image, facts)
                for image, (_, _, facts) in zip(images[: len(batch)], calls, strict=True)]

    def build_call(self, variants: Any) -> tuple[Any, dict[str, Any], CallFacts]:
        """The pipeline (loaded, or its img2img/inpaint variant), its keyword arguments and
        the facts of the call."""
        loaded, inputs = self.loaded, self.inputs
        pipe, image_kwargs = _target(loaded, variants, inputs, self)
        head = CallHeader.of(pipe)
        sig = head.sig
        width, height = self.width, self.height
        if inputs.inpaint:
            width, height = _inpaint_size(width, height, inputs.image, pipe)
        kwargs: dict[str, Any] = head.defaults(loaded)
        if type(pipe).__name__ == "FluxPipeline" and sig.accepts("max_sequence_length"):
            kwargs.setdefault("max_sequence_length", FLUX_MAX_SEQUENCE_LENGTH)
        if not inputs.inpaint and "image" in image_kwargs and sig.accepts("strength"):
            kwargs.setdefault("strength", DEFAULT_IMG2IMG_STRENGTH)
            if width and height and not sig.accepts("width"):
                # img2img pipelines take their size from the picture: resize it to the request's.
                image_kwargs["image"] = _resized(image_kwargs["image"], width, height)
        kwargs.update(image_kwargs)
        kwargs.update(prompts.build_prompt_kwargs(
            pipe, self.job.prompt if self.prompt is None else self.prompt, self.negative,
            use_compel=self.settings.compel,
            sd_embed=self.settings.sd_embed, clip_skip=self.clip_skip,
            clip_skip_enabled=self.settings.clip_skip_enabled))
        kwargs.update(head.noise(self.seed, self.steps, width, height))
        if ip_adapter.is_loaded(pipe):
            kwargs.update(ip_adapter.call_kwargs(pipe, loaded.spec, inputs.adapter))
        if width and height and sig.accepts("max_area"):  # Kontext: else it picks ~1024x1024
            kwargs.setdefault("max_area", width * height)
            if inputs.inpaint and sig.accepts("_auto_resize"):
                # Kontext inpainting takes its output size from the picture (by default
                # snapped to a ~1 MP Kontext size): give it the request's size instead.
                kwargs.update(_auto_resize=False, image=_resized(kwargs["image"], width, height),
                              mask_image=kwargs["mask_image"].resize((width, height)))
        call = head.accepted(kwargs)
        steps, note = self.steps, self.note
        strength = call.get("strength")
        if (isinstance(strength, (int, float)) and 0 < strength <= 1
                and int(call.get("num_inference_steps", 0) * strength) < 1):
            # img2img denoises only steps*strength steps; 0 would crash inside diffusers.
            steps = call["num_inference_steps"] = -int(-1 // strength)
            note = "; ".join(x for x in (note, f"steps raised to {steps} so that strength "
                                         f"{strength} runs at least one denoising step") if x)
        return pipe, call, CallFacts(steps, type(pipe).__name__, note)

    # -- writer thread -----------------------------------------------------------------
    def write(self, output: ImageOutput) -> str:
        """Write the PNG (inpainting: original pasted back outside the mask); the reply."""
        inputs, job, facts, image = self.inputs, self.job, output.facts, output.image
        if inputs.inpaint:
            image = paste_outside_mask(image, inputs.image, inputs.mask)
        media.write_png_atomic(image, job.dst, compress_level=self.settings.png_compression)
        parts = [f"image written to {job.dst}", f"seed={self.seed}",
                 f"{image.width}x{image.height}", f"steps={facts.steps}"]
        if inputs.inpaint:
            parts.append(f"inpainted with {facts.pipeline}")
        elif inputs.image is not None:
            parts.append(f"from the input image with {facts.pipeline}")
        if self.loras:
            parts.append("LoRA " + ", ".join(f"{use.name}:{use.weight:g}"
                                              for use in self.loras.uses))
        if facts.note:
            parts.append(facts.note)
        return "; ".join(parts)


def plan_image(loaded: LoadedPipeline, job: ImageJob, settings: Settings) -> ImagePlan:
    """Validate one image request against the loaded model and decode its input images.

    Precedence: the request's own values (steps, size, seed, CLIP skip) win over the
    model's load-time defaults (Options, CLIPSkip); CFGScale and the call options apply to
    every call. ``EnableParameters`` is read by nobody (see ``calls.accepted_kwargs``).
    """
    check_steps(job.steps, settings)
    width, height, note = check_size(job.width or option_int(loaded, "width"),
                                     job.height or option_int(loaded, "height"),
                                     loaded.pipe, settings)
    media.check_output_path(job.dst)
    inputs = _open_inputs(loaded, job, settings)
    steps = steps_or_default(job.steps, loaded)
    prompt, loras = plan_loras(loaded, job.prompt, job.negative_prompt, settings.safetensors_only)
    clip_skip = prompts.effective_clip_skip(job.clip_skip, loaded.spec.clip_skip)
    check_clip_skip_limit(loaded.pipe, clip_skip, settings.clip_skip_enabled)
    return ImagePlan(
        job=job, loaded=loaded, settings=settings, width=width, height=height, steps=steps,
        seed=pick_seed(job.seed),
        clip_skip=clip_skip,
        negative=job.negative_prompt,
        note="; ".join(x for x in (note, inputs.note) if x), inputs=inputs,
        prompt=prompt, loras=loras)


def _open_inputs(loaded: LoadedPipeline, job: ImageJob, settings: Settings) -> _Inputs:
    """Decode what the request sends, checking it fits the loaded model.

    - ``src`` a JSON file (the host's inpainting endpoint): picture and mask
      (``ref_images = [image, mask]`` as fallback);
    - else ``ref_images[0]`` (else ``src``) is the picture, as in LocalAI's backend:
      img2img, or the control image of a ControlNet pipeline; a ControlNet img2img pipeline
      takes ``src`` as the picture and ``ref_images[0]`` (else ``src``) as the control image.
    """
    limit = settings.max_input_pixels
    inpaint = media.load_inpaint_inputs(job.src, list(job.ref_images), max_pixels=limit,
                                        max_json_bytes=settings.max_inpaint_json_bytes)
    if inpaint is not None:
        return _Inputs(image=inpaint[0], mask=inpaint[1])
    for index, ref in enumerate(job.ref_images):
        if ref:
            media.check_input_path(ref, field=f"ref_images[{index}]")
    if references.takes_reference_list(type(loaded.pipe)):
        return _reference_list(job, limit)
    if ip_adapter.is_loaded(loaded.pipe) and getattr(loaded.pipe, "controlnet", None) is None:
        return _adapter_inputs(job, limit)  # (with a ControlNet the references stay its own)
    first_ref = job.ref_images[0] if job.ref_images else ""
    sig = call_signature(type(loaded.pipe))
    two_pictures = sig.accepts("control_image") and job.src and first_ref
    source = job.src if two_pictures else (first_ref or job.src)
    if not source:
        if sig.required_image:
            raise InvalidArgument(
                f"the loaded {type(loaded.pipe).__name__} needs an input image: send src "
                "(or ref_images) with the request"
            )
        return _Inputs()
    image = media.open_image(source, field="src" if source == job.src else "ref_images[0]",
                             max_pixels=limit)
    fields = [name for name, _ in references.reference_fields(job.ref_images)]
    left_out = references.left_out_note(type(loaded.pipe).__name__, fields[1:])
    control = None
    if sig.accepts("control_image"):
        control = image
        if two_pictures:
            control = media.open_image(first_ref, field="ref_images[0]", max_pixels=limit)
        # control_preprocess: an ordinary photo becomes the edge/depth map the ControlNet reads.
        control = preprocess_control(control, loaded.spec.options, loaded.spec.model_path)
    elif getattr(loaded.pipe, "controlnet", None) is not None:
        # ControlNet text-to-image: its ``image`` is the control image.
        image = preprocess_control(image, loaded.spec.options, loaded.spec.model_path)
    return _Inputs(image=image, control=control, note=left_out)


def _adapter_inputs(job: ImageJob, limit: int) -> _Inputs:
    """With an IP-Adapter loaded: the first reference is the adapter's picture and ``src``
    (if any) the image-to-image picture; without a reference the adapter is off."""
    fields = references.reference_fields(job.ref_images)
    adapter = (media.open_image(fields[0][1], field=fields[0][0], max_pixels=limit)
               if fields else None)
    image = media.open_image(job.src, field="src", max_pixels=limit) if job.src else None
    note = "IP-Adapter image: ref_images[0]" if fields else "IP-Adapter off: no reference"
    left_out = references.left_out_note("the IP-Adapter", [name for name, _ in fields[1:]])
    return _Inputs(image=image, adapter=adapter,
                   note="; ".join(x for x in (note, left_out) if x))


def _reference_list(job: ImageJob, limit: int) -> _Inputs:
    """Every reference, in order, for a pipeline that combines them (else ``src`` alone, or
    text-to-image when neither is sent)."""
    fields = references.reference_fields(job.ref_images) or (
        [("src", job.src)] if job.src else [])
    if not fields:
        return _Inputs()
    images = [media.open_image(value, field=name, max_pixels=limit) for name, value in fields]
    return _Inputs(image=images, note=f"{len(images)} reference image(s) combined")


def _target(loaded: LoadedPipeline, variants: Any, inputs: _Inputs,
            plan: ImagePlan) -> tuple[Any, dict[str, Any]]:
    """The pipeline that serves these inputs on the loaded weights, and its image kwargs."""
    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    if inputs.inpaint:
        target = pipe if sig.accepts("mask_image") else variants.get("inpaint")
        kwargs = {"image": inputs.image, "mask_image": inputs.mask}
        if call_signature(type(target)).accepts("control_image"):
            kwargs["control_image"] = _inpaint_control_image(plan, inputs.image, inputs.mask)
        return target, kwargs
    if inputs.image is None:
        return pipe, {}
    if inputs.control is not None:  # ControlNet img2img: picture + control image
        return pipe, {"image": inputs.image, "control_image": inputs.control}
    if sig.accepts("image"):
        return pipe, {"image": inputs.image}
    return variants.get("img2img"), {"image": inputs.image}


def _inpaint_control_image(plan: ImagePlan, image: Any, mask: Any) -> Any:
    """The control image of a ControlNet inpainting request.

    The host's inpainting endpoint sends only picture and mask, so by default the control
    image is the picture with the masked pixels set to -1: the conditioning inpainting
    ControlNets are trained on. A third reference (``ref_images[2]``) overrides it, for
    ControlNets of another kind (edges, depth...).
    """
    refs = [r for r in plan.job.ref_images if r]
    if len(refs) >= 3:
        control = media.open_image(refs[2], field="ref_images[2]",
                                   max_pixels=plan.settings.max_input_pixels)
        return preprocess_control(control, plan.loaded.spec.options, plan.loaded.spec.model_path)
    import numpy as np
    import torch

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    masked = np.asarray(mask.convert("L"), dtype=np.float32) > 127.5
    pixels[masked] = -1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())


def _inpaint_size(width: int, height: int, image: Any, pipe: Any) -> tuple[int, int]:
    """Without a requested size, inpaint at the picture's own size (snapped down)."""
    if width and height:
        return width, height
    multiple = size_multiple(pipe)
    snap_w = max(multiple, image.width - image.width % multiple)
    snap_h = max(multiple, image.height - image.height % multiple)
    return width or snap_w, height or snap_h


def _resized(image: Any, width: int, height: int) -> Any:
    from PIL import Image

    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def paste_outside_mask(result: Any, original: Any, mask: Any) -> Any:
    """Keep the original picture wherever the mask is black; blend along a soft edge.

    Diffusers' inpainting runs the whole picture through the VAE, which changes pixels the
    mask does not cover (a little for a real VAE; completely for a random one, and always
    for a 4-channel UNet that only blends latents). Compositing afterwards, with the mask
    as alpha (white = repainted), makes every pixel outside the mask the original pixel,
    exactly. Image and mask are resized (Lanczos / bilinear) to the result's size first
    when the request asked for another size.
    """
    import numpy as np
    from PIL import Image

    if original.size != result.size:
        original = original.resize(result.size, Image.Resampling.LANCZOS)
    if mask.size != result.size:
        mask = mask.resize(result.size, Image.Resampling.BILINEAR)
    alpha = np.asarray(mask.convert("L"), dtype=np.float32)[:, :, None] / 255.0
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    painted = np.asarray(result.convert("RGB"), dtype=np.float32)
    mixed = base * (1.0 - alpha) + painted * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB")
