"""README.md and docs/*.md, read by a Markdown parser: they render, link and name real things.

markdown-it-py (a CommonMark parser) reads each page as GitHub renders it. The checks:
every code fence opens and closes where its author meant (a fence line inside a block means
the block swallowed the text after it); every relative link and image points at a file that
exists and, with ``#anchor``, at a heading there; every docs page is linked from the README;
every repository path written in code (``tests/e2e/test_x.py``) exists; and the commands
the README names are real (the quick start's client commands and options; every make target
is checked by running make, in tests/e2e/test_make_install.py).
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
PAGE_IDS = [str(p.relative_to(REPO_ROOT)) for p in PAGES]
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Paths inside the repository written as code: `tests/e2e/test_x.py`, `docs/engine.md`.
_REPO_PATH = re.compile(
    r"^(?:tests|diffusers_backend|bench|docs|scripts)/[\w./-]*\.(?:py|md|txt|yaml|toml|sh)$")


@cache
def _tokens(path: Path) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text())


def _walk(tokens: list[Token]):
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a page; a repeated heading gets -1, -2... as on GitHub."""
    tokens, seen, found = _tokens(path), {}, set()
    for i, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        text = "".join(child.content for child in tokens[i + 1].children
                       if child.type in ("text", "code_inline"))
        slug = github_slug(text)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def _links(path: Path) -> list[str]:
    out = []
    for token in _walk(_tokens(path)):
        if token.type == "link_open":
            out.append(str(token.attrs.get("href", "")))
        elif token.type == "image":
            out.append(str(token.attrs.get("src", "")))
    return out


def _relative(href: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I)  # http:, https:, mailto:...


def _fences(path: Path) -> list[Token]:
    return [t for t in _tokens(path) if t.type == "fence"]


def _section(path: Path, title_start: str) -> list[Token]:
    """The tokens from the level-2 heading starting with ``title_start`` to the next one."""
    tokens, out, inside = _tokens(path), [], False
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            inside = tokens[i + 1].content.startswith(title_start)
        elif inside:
            out.append(token)
    assert out, f"{path.name} has no section {title_start!r}"
    return out


# -- the checks -------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_fence_closes_where_it_should(page):
    """A fence line inside a block (``` Text, or an unclosed block) is a broken fence."""
    lines = page.read_text().splitlines()
    fence_lines = {i for i, line in enumerate(lines) if _FENCE_LINE.match(line)}
    used = set()
    for fence in _fences(page):
        start, end = fence.map
        closing = lines[end - 1].strip() if end - 1 > start else ""
        assert closing.startswith(fence.markup) and closing.strip("`~") == "", (
            f"{page.name}:{start + 1}: the {fence.markup}{fence.info} block is never closed")
        used.update({start, end - 1})
    stray = sorted(i + 1 for i in fence_lines - used)
    assert not stray, f"{page.name}: fence lines that open or close nothing: {stray}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_resolve(page):
    broken = []
    for href in _links(page):
        if not href or not _relative(href):
            continue
        target, _, anchor = href.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{href} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{href} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / h.partition("#")[0]).resolve() for h in _links(README)
              if _relative(h) and h.partition("#")[0]}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_in_code_exist(page):
    """A path such as `tests/e2e/test_x.py` that moved or was deleted is a stale claim."""
    spans = [t.content for t in _walk(_tokens(page)) if t.type == "code_inline"]
    missing = sorted({s for s in spans if _REPO_PATH.match(s) and "*" not in s
                      and not (REPO_ROOT / s).exists()})
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


_STALE_FIGURES = re.compile(r"\b\d+\s+tests\b|\b\d+\s+passed\b|\b\d+\s+min\s+\d+\s+s\b")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_figure_that_goes_stale_by_itself(page):
    """Test counts and suite times change with every commit; no test keeps them true."""
    found = _STALE_FIGURES.findall(page.read_text())
    assert not found, f"{page.name} states figures nothing keeps true: {found}"


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move reference to docs/"


def _commands(section: list[Token]) -> list[list[str]]:
    """Each shell command line of the section's bash blocks, split like a shell does."""
    out = []
    for fence in (t for t in section if t.type == "fence" and t.info.strip() == "bash"):
        for line in fence.content.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


QUICK_START = _commands(_section(README, "Quick start")) + _commands(
    _section(README, "Offline"))


def test_the_quick_start_is_three_commands_and_the_demo_one():
    assert [c[0] for c in QUICK_START] == ["make", ".venv/bin/diffusers-client",
                                         ".venv/bin/diffusers-client", "make"]
    assert QUICK_START[0][1] == "run" and QUICK_START[-1][1] == "demo"


@pytest.mark.parametrize("argv", [c for c in QUICK_START if c[0].endswith("diffusers-client")],
                         ids=lambda c: " ".join(c[1:3]))
def test_quick_start_client_commands_parse(argv):
    """The client's own parser accepts each command line exactly as the README writes it."""
    from diffusers_backend.serving.client import build_parser

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"diffusers-client rejects {' '.join(argv[1:])!r} ({exc})")
    assert args.command in {"load", "image"}
