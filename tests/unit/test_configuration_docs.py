"""docs/configuration.md's option and environment tables are the ones the code generates.

Run as a script to rewrite the tables after changing an option or a variable:
``.venv/bin/python tests/unit/test_configuration_docs.py``.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BLOCK = re.compile(r"(<!-- generated: ([\w.]+) -->\n)(.*?)(<!-- end generated -->)", re.S)
GENERATORS = ("diffusers_backend.loading.options_table.markdown_table",
              "diffusers_backend.settings.markdown_table")


def generate(target: str) -> str:
    module, _, function = target.rpartition(".")
    return str(getattr(importlib.import_module(module), function)())


def blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group(2)) + m.group(4), text)


@pytest.mark.parametrize("target", GENERATORS)
def test_the_table_in_the_docs_is_the_generated_one(target):
    found = blocks(DOC.read_text(encoding="utf-8"))
    assert target in found, f"docs/configuration.md has no generated block for {target}"
    assert found[target] == generate(target), (
        f"docs/configuration.md's table from {target} is stale; rewrite it with "
        f"`.venv/bin/python {Path(__file__).relative_to(DOC.parents[1])}`")


def test_a_changed_row_is_caught():
    """The comparison can fail: one edited cell makes the page disagree with the code."""
    text = rewrite(DOC.read_text(encoding="utf-8"))
    tampered = text.replace("| `torch_dtype` | load |", "| `torch_dtype` | call |", 1)
    assert tampered != text
    assert blocks(tampered)[GENERATORS[0]] != generate(GENERATORS[0])


if __name__ == "__main__":
    sys.path.insert(0, str(DOC.parents[1]))
    DOC.write_text(rewrite(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the generated tables of {DOC}")
