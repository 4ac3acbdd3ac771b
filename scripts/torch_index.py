"""Print pip's ``--extra-index-url URL`` for a torch index that answers, else nothing.

``make install`` runs ``pip install $(python scripts/torch_index.py $(TORCH_INDEX)) ...``:
PyTorch's CPU index (the default for BUILD_TYPE=cpu) has CPU-only wheels, several GB
smaller than PyPI's CUDA builds, but a machine that cannot reach it must still install from
the indexes pip is configured with (PyPI, a mirror, or a folder of wheels) instead of
failing. An empty URL prints nothing and asks nothing. Standard library only: it runs
before anything is installed.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TIMEOUT_S = 5.0


def unreachable(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when ``url`` answers with a page (or, ``file:``, is a folder), else why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        folder = Path(urllib.request.url2pathname(parts.path))
        return None if folder.is_dir() else f"no folder {folder}"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - an index URL
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return str(reason)


def main(argv: list[str]) -> int:
    url = argv[0].strip() if argv else ""
    if not url:
        return 0
    reason = unreachable(url)
    if reason is None:
        print(f"--extra-index-url {url}")
    else:
        print(f"torch index {url} not reachable ({reason}); installing torch from pip's "
              "configured indexes instead (TORCH_INDEX=URL names a mirror, TORCH_INDEX= "
              "skips this check)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
