"""Dynamic discovery and loading of Hugging Face diffusers pipelines.

New diffusers pipelines become usable without code changes: the pipeline names are read
from diffusers' own lazy import structure and the source files it points at, never from a
hand-written list, and a class is imported only when it is actually resolved.

Why it is built this way:

* Importing every pipeline module (what a naive ``dir(diffusers)`` scan does) costs
  seconds and hundreds of MB. Here the name registry (names, defining modules, whether
  deprecated, whether single-file loading is supported, a few facts used for ranking) is
  built once, without importing any pipeline module, and kept in a small JSON cache keyed
  by the diffusers version and install location. A fresh process can then list pipelines
  and tasks without importing torch or diffusers at all.
* Task aliases (``text-to-image``, ``img2img``, ``stable-diffusion-xl``...) are derived
  from class names by rules plus diffusers' own AutoPipeline mappings, and ranked: the
  AutoPipeline for a task first, deprecated pipelines last, a family alias to the family's
  plain class.
* Model ids are resolved offline first (local folder ``model_index.json``, single-file
  checkpoint keys, the Hugging Face cache), the Hub only when allowed and with a timeout.

Usage::

    from diffusers_dynamic_loader import load_diffusers_pipeline, resolve_pipeline_name

    resolve_pipeline_name(task="img2img")                 # 'AutoPipelineForImage2Image'
    pipe = load_diffusers_pipeline(model_id="/models/sd15", torch_dtype=torch.float16)

This module is the public face (hosts import it by this name, and LocalAI's own loader
tests run against it); the parts live in ``diffusers_backend/registry/``: ``names`` (words in
class names), ``scan`` (records read from diffusers' sources), ``disk_cache``, ``aliases``
(task aliases, ranked), ``store`` (the one registry object: records, aliases, caches, one
lock, one ``clear()``), ``sniffing`` (model id -> class), ``resolution`` (name, task or model
id -> class) and ``introspection`` (loading, descriptions, class discovery).

The cache directory is ``$DIFFUSERS_LOADER_CACHE_DIR``, else
``$XDG_CACHE_HOME/localai-diffusers``, else ``~/.cache/localai-diffusers``.
"""

from __future__ import annotations

from diffusers_backend.registry.disk_cache import cache_dir
from diffusers_backend.registry.introspection import (
    PipelineLoadError,
    discover_diffusers_classes,
    get_available_classes,
    get_pipeline_info,
    load_diffusers_pipeline,
)
from diffusers_backend.registry.names import camel_to_kebab, extract_task_keywords, norm
from diffusers_backend.registry.resolution import (
    get_available_pipelines,
    get_available_tasks,
    get_pipeline_registry,
    get_task_aliases,
    resolve_pipeline_class,
    resolve_pipeline_name,
)
from diffusers_backend.registry.sniffing import infer_pipeline_name_from_model_id
from diffusers_backend.registry.store import REGISTRY

__all__ = [
    "PipelineLoadError",
    "clear_caches",
    "discover_diffusers_classes",
    "get_available_classes",
    "get_available_pipelines",
    "get_available_tasks",
    "get_pipeline_info",
    "get_pipeline_registry",
    "get_task_aliases",
    "infer_pipeline_name_from_model_id",
    "load_diffusers_pipeline",
    "resolve_pipeline_class",
    "resolve_pipeline_name",
]

# The underscore names LocalAI's loader tests (and older hosts) call, kept on this face only.
_camel_to_kebab = camel_to_kebab
_extract_task_keywords = extract_task_keywords
_norm = norm
_cache_dir = cache_dir
_get_records = REGISTRY.records


def clear_caches() -> None:
    """Forget everything computed in this process (the disk cache is left alone)."""
    REGISTRY.clear()
