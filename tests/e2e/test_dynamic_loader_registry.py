"""diffusers_dynamic_loader's pipeline registry checked from other interpreters: complete
and right against a full import-every-pipeline scan (ground truth, run once in a subprocess so
this process stays light), and its disk cache read by a fresh process without importing torch
or diffusers. The in-process parts of the loader are tested in
tests/unit/test_dynamic_loader.py.

All offline (HF_HUB_OFFLINE=1) and isolated from the user's cache (DIFFUSERS_LOADER_CACHE_DIR
points into a tmp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import diffusers_dynamic_loader as dl

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTO_CORE = {"AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting"}


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test uses a private cache dir, never the Hub, and starts from clean in-process
    caches."""
    cache = tmp_path_factory.mktemp("loader-cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DIFFUSERS_LOADER_CACHE_DIR", str(cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        dl.clear_caches()
        yield cache
        dl.clear_caches()


def run_py(code: str, env_extra: dict[str, str] | None = None, timeout: int = 240) -> str:
    """Run ``code`` in a fresh interpreter rooted at the repo; return stdout (asserts rc 0)."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def full_scan():
    """Ground truth like the old loader: import every top-level name, keep pipelines."""
    out = run_py(
        """
        import json, warnings, logging
        warnings.filterwarnings("ignore")
        import diffusers
        from diffusers import DiffusionPipeline
        res = {}
        for n in dir(diffusers):
            try:
                o = getattr(diffusers, n)
            except Exception:
                continue
            if isinstance(o, type) and (issubclass(o, DiffusionPipeline)
                                        or n.startswith("AutoPipelineFor")):
                res[n] = {"single_file": callable(getattr(o, "from_single_file", None)),
                          "module": o.__module__,
                          "pipeline": issubclass(o, DiffusionPipeline)}
        print("JSON" + json.dumps(res))
        """
    )
    return json.loads(out.split("JSON", 1)[1])


@pytest.mark.slow
def test_registry_complete_against_full_scan(full_scan):
    names = set(dl.get_pipeline_registry())
    scan_pipes = {n for n, v in full_scan.items() if v["pipeline"]}
    assert scan_pipes - names == set(), "pipelines missing from the registry"
    extra = names - scan_pipes
    assert AUTO_CORE <= extra
    assert all(n.startswith("AutoPipelineFor") for n in extra), extra


@pytest.mark.slow
def test_recorded_facts_match_real_classes(full_scan):
    records = dl._get_records()["pipelines"]
    for name, real in full_scan.items():
        assert records[name]["single_file"] == real["single_file"], name
        if ".deprecated." in real["module"]:
            assert records[name]["deprecated"], name
    assert records["AltDiffusionImg2ImgPipeline"]["deprecated"]
    assert not records["StableDiffusionPipeline"]["deprecated"]


def test_disk_cache_written_reused_and_rebuilt(isolated_cache, caplog):
    dl.clear_caches()
    dl.get_available_pipelines()
    files = list(isolated_cache.glob("pipeline-registry-*.json"))
    assert len(files) == 1
    path = files[0]
    data = json.loads(path.read_text())
    assert data["stamp"]["diffusers_version"] == __import__("diffusers").__version__
    assert "StableDiffusionPipeline" in data["pipelines"]

    # A fresh process lists from the cache without importing torch or diffusers.
    out = run_py(
        """
        import sys, json
        import diffusers_dynamic_loader as dl
        pipes = dl.get_available_pipelines(); tasks = dl.get_available_tasks()
        print(json.dumps([len(pipes), len(tasks), dl.resolve_pipeline_name(task="img2img"),
                          "torch" in sys.modules, "diffusers" in sys.modules]))
        """,
        {"DIFFUSERS_LOADER_CACHE_DIR": str(isolated_cache)},
    )
    n_pipes, n_tasks, img2img, torch_in, diffusers_in = json.loads(out)
    assert (n_pipes, n_tasks) == (len(dl.get_available_pipelines()), len(dl.get_available_tasks()))
    assert img2img == "AutoPipelineForImage2Image"
    assert not torch_in and not diffusers_in

    # Recorded diffusers version differs -> rebuilt and rewritten.
    data["stamp"]["diffusers_version"] = "0.0.1"
    data["pipelines"] = {"FakePipeline": data["pipelines"]["StableDiffusionPipeline"]}
    path.write_text(json.dumps(data))
    dl.clear_caches()
    assert "FakePipeline" not in dl.get_pipeline_registry()
    rewritten = json.loads(path.read_text())
    assert rewritten["stamp"]["diffusers_version"] != "0.0.1"
    assert "FakePipeline" not in rewritten["pipelines"]

    # Corrupt file -> warning, rebuilt in memory, file repaired.
    path.write_text("{not json")
    dl.clear_caches()
    with caplog.at_level("WARNING", logger="diffusers_dynamic_loader"):
        assert "StableDiffusionPipeline" in dl.get_pipeline_registry()
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["pipelines"]
    dl.clear_caches()
