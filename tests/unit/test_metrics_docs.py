"""docs/observability.md's metric table names every metric the server exports, as served.

In process: the metrics registry is built and read without an HTTP endpoint."""

from __future__ import annotations

import re
from pathlib import Path

from diffusers_backend.serving.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _served_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.name.startswith("diffusers_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_served_metric_is_in_the_table_under_its_served_name():
    rows = re.findall(r"^\| (`diffusers_.*?) \|", DOC.read_text(), flags=re.M)
    table = {name for row in rows for name in re.findall(r"`(diffusers_[a-z_]+)`", row)}
    missing = _served_names() - table
    assert not missing, f"metrics served but not in docs/observability.md: {sorted(missing)}"
