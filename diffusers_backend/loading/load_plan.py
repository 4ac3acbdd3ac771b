"""LoadModel's first stage, *resolve*: what the spec names, as one frozen :class:`LoadPlan`.

The plan holds the model (a URL fetched once, then the reference: folder, file or Hub id),
every side path an option or field names (the option table's path options, LoRAs,
ControlNet, CLIP), the device and the dtype; :meth:`LoadPlan.paths` yields every path the
load will read, which is what :mod:`load_guard` checks. Resolving looks at the disk only
inside the allowed folders and reads no file's content: the class, which does (a folder's
``model_index.json``, a checkpoint's keys), is :func:`classify`'s, after the guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import download, hub, placement, special
from diffusers_backend.loading.dependencies import check_pipeline_dependencies
from diffusers_backend.loading.model_ref import (
    ModelRef,
    RefKind,
    looks_missing,
    missing_model_message,
    resolve_model_ref,
)
from diffusers_backend.loading.options_table import PATH_OPTIONS
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.loading.weight_guard import check_names, locate
from diffusers_backend.settings import Settings

# LoadModel fields that name weights beside the model (besides the LoRAs), with the word
# messages use for them.
FIELD_PATHS = (("controlnet", "ControlNet"), ("clip_model", "CLIP model"))


@dataclass(frozen=True)
class SidePath:
    """A file or folder an option or field names beside the model."""

    field: str  # the option key, or what the field holds ("LoRA", "ControlNet"...)
    name: str  # as the YAML wrote it
    role: str  # "weights" or "config" (options_table.Option.path)
    location: Path | None  # where it is on disk; None: not on disk (a Hub id, or missing)


class PlanPath(NamedTuple):
    """One path the load will read: what names it, where, and how it is checked."""

    field: str
    path: str
    role: str  # "model", "weights" or "config"


@dataclass(frozen=True)
class LoadPlan:
    """Everything the later stages need to know, decided before any weights are read."""

    spec: LoadSpec  # a URL model replaced by its downloaded file
    identity: str  # the Model LoadModel received (a link stays the link)
    ref: ModelRef
    sides: tuple[SidePath, ...]
    device: str
    dtype: Any  # a torch.dtype
    settings: Settings
    cls: type | None = None  # set by classify(), after the guard

    def paths(self) -> Iterator[PlanPath]:
        """Every filesystem path the load will read: the model (unless a Hub id) and each
        side path found on disk."""
        if self.ref.kind is not RefKind.HUB:
            yield PlanPath("model", self.ref.location, "model")
        for side in self.sides:
            if side.location is not None:
                yield PlanPath(side.field, str(side.location), side.role)

    def side(self, field: str) -> SidePath | None:
        return next((s for s in self.sides if s.field == field), None)

    @property
    def pipeline_class(self) -> type:
        if self.cls is None:
            raise RuntimeError("the plan has no class yet: classify() it after the guard")
        return self.cls


def side_paths(spec: LoadSpec) -> tuple[SidePath, ...]:
    """Every path option present (drawn from the option table, so a new one is included by
    being declared) and the weight fields, each located on disk."""
    found: list[SidePath] = []
    for option in PATH_OPTIONS:
        for key in option.keys:
            named = spec.options.get(key)
            if isinstance(named, str) and named.strip():
                location = locate(named.strip(), spec.model_path, key,
                                  dangling=option.path == "weights")
                found.append(SidePath(key, named.strip(), option.path, location))
    fields = [("LoRA", name) for name in (spec.lora_adapter, *spec.lora_adapters)]
    fields += [(what, getattr(spec, name)) for name, what in FIELD_PATHS]
    for what, name in fields:
        if name and name.strip():
            location = locate(name.strip(), spec.model_path, what)
            found.append(SidePath(what, name.strip(), "weights", location))
    return tuple(found)


def resolve(spec: LoadSpec, settings: Settings) -> LoadPlan:
    """The plan for ``spec``: names checked, side paths located, a URL model fetched once,
    the model reference, device and dtype. Reads no file's content."""
    identity = spec.model
    check_names(spec)
    sides = side_paths(spec)
    spec = download.fetch_url_model(spec, settings.safetensors_only)
    ref = resolve_model_ref(spec.model, spec.model_file, spec.model_path,
                            safetensors_only=settings.safetensors_only)
    return LoadPlan(spec=spec, identity=identity, ref=ref, sides=sides,
                    device=placement.pick_device(spec, settings),
                    dtype=placement.torch_dtype(spec), settings=settings)


# pipeline_type values that mean "the class the model itself declares" (its model_index.json,
# checkpoint or Hub entry). DiffusionPipeline.from_pretrained does that lookup anyway; doing it
# here lets the family's special loader apply. VideoDiffusionPipeline is no diffusers class:
# LocalAI's docs use it for text-to-video models and its backend loads it as DiffusionPipeline.
_MODEL_DECLARED_TYPES = frozenset({"diffusionpipeline", "videodiffusionpipeline"})


def resolve_class(spec: LoadSpec, ref: ModelRef) -> type:
    """PipelineType as a class name, a model class a special loader builds a pipeline around
    (FluxTransformer2DModel) or a task; else what the model itself declares."""
    from diffusers_backend.registry.resolution import (
        closest_pipeline_names,
        resolve_pipeline_class,
    )

    wanted = spec.pipeline_type.strip()
    if wanted.lower() in _MODEL_DECLARED_TYPES:
        wanted = ""
    if wanted:
        component = special.component_class(wanted)
        if component is not None:
            return component
        try:
            return resolve_pipeline_class(class_name=wanted)
        except ValueError:
            try:
                return resolve_pipeline_class(task=wanted)
            except ValueError:
                raise LoadError(
                    f"pipeline_type {wanted!r} is neither a diffusers pipeline class nor a "
                    f"task; did you mean {', '.join(closest_pipeline_names(wanted))}?"
                ) from None
    try:
        return resolve_pipeline_class(model_id=ref.location)
    except ValueError as exc:
        raise LoadError(f"cannot tell the pipeline class of {ref.location}: {exc}") from None


def classify(plan: LoadPlan) -> LoadPlan:
    """The plan with its pipeline class, read from the (guarded) model, and the class's
    extra packages checked (e.g. torchvision) before any weights are read."""
    spec, ref = plan.spec, plan.ref
    if ref.kind is RefKind.HUB and hub.unreachable() and not hub.is_cached(ref.location):
        # no Hub and no cached copy: say so now, not after the library's retries
        raise LoadError(missing_model_message(spec.model, spec.model_file, spec.model_path))
    # a .gguf file is a transformer alone: its base repo names the pipeline class
    class_ref = special.gguf_base_ref(spec, plan.settings) if special.is_gguf(ref) else ref
    try:
        cls = resolve_class(spec, class_ref)
    except LoadError as exc:
        if ref.kind is RefKind.HUB and looks_missing(exc):
            raise LoadError(missing_model_message(spec.model, spec.model_file,
                                                  spec.model_path)) from exc
        raise
    check_pipeline_dependencies(cls)
    return replace(plan, cls=cls)
