"""How LocalAI finds and runs this backend, read from the files it uses: the gallery entries
name images the Dockerfile builds (a requirements file per BUILD_TYPE, run.sh at the image's
top level), and the docs show the three ways LocalAI runs it. Starting run.sh as LocalAI does
is tested in tests/e2e/test_localai_launch.py."""

from __future__ import annotations

from pathlib import Path

import yaml
from harness import REPO_ROOT


def test_gallery_entries_name_images_the_dockerfile_builds():
    """Every variant LocalAI may pick has an image whose BUILD_TYPE has a requirements file,
    and the image puts run.sh at its top level (where LocalAI looks for it)."""
    entries = yaml.safe_load((REPO_ROOT / "gallery.yaml").read_text())
    by_name = {entry["name"]: entry for entry in entries}
    meta = by_name["diffusers-grpc"]
    assert meta["alias"] == "diffusers"
    for capability, name in meta["capabilities"].items():
        uri = by_name[name]["uri"]
        build_type = uri.rsplit("-", 1)[-1]
        assert (REPO_ROOT / f"requirements-{build_type}.txt").is_file(), (capability, uri)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "FROM scratch" in dockerfile and "COPY --from=builder /backend/ /" in dockerfile
    assert "run.sh" in dockerfile
    run_sh = (REPO_ROOT / "run.sh").read_text()
    assert "python/bin/python3" in run_sh  # the interpreter the image bundles


def test_the_docs_show_the_three_ways_localai_runs_this_backend():
    readme = (REPO_ROOT / "README.md").read_text()
    assert '--external-grpc-backends "diffusers:' in readme and "/run.sh" in readme
    page = (REPO_ROOT / "docs" / "localai.md").read_text()
    assert '--external-grpc-backends "diffusers:' in page  # 1. LocalAI starts it
    assert '--external-grpc-backends "diffusers:gpu-box:50051"' in page  # 2. already running
    assert "LOCALAI_BACKEND_GALLERIES" in page  # 3. a gallery image
    assert Path(REPO_ROOT / "gallery.yaml").name in page
