"""`make site`: static HTML of the executed notebooks with an index and prev/next links.

Named ``test_zz_*`` so that, in ``make test``, it runs after ``test_notebooks.py`` and
reuses the executed copies in build/notebooks-smoke/.
"""
from __future__ import annotations

import os
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from icp_course.nbrun import list_notebooks
from icp_course.site import build_site, inline_markdown, notebook_info

ROOT = Path(__file__).resolve().parents[1]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str | None]] = []  # (href, rel)
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append((a["href"], a.get("rel")))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _check_site(index: Path, sources: list[Path]) -> None:
    site = index.parent
    idx = _parse(index)
    hrefs = [h for h, _ in idx.links]
    text = " ".join(idx.text)
    pages = [p.stem + ".html" for p in sources]
    assert hrefs == pages, f"the index links every notebook, in order: {hrefs} vs {pages}"
    for i, (src, page) in enumerate(zip(sources, pages)):
        info = notebook_info(src)
        assert info.title in text, f"index shows the title of {src.name}"
        assert info.goals and all(f"<li>{inline_markdown(g)}</li>" in index.read_text() for g in info.goals)
        html_file = site / page
        assert html_file.exists() and html_file.stat().st_size > 5_000
        links = _parse(html_file).links
        rel = {r: h for h, r in links if r in ("prev", "next")}
        assert ("index.html", None) in links
        assert rel.get("prev") == (pages[i - 1] if i > 0 else None)
        assert rel.get("next") == (pages[i + 1] if i + 1 < len(pages) else None)


def _tiny_notebook(path: Path, title: str, goal: str, code: str, outputs=None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(code)
    if outputs is not None:
        cell.outputs = outputs
        cell.execution_count = 1
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n**Learning goals**\n- {goal}\n- second *goal*\n\n"
                                              "**Prerequisites:** none\n\n**Time:** 5 min"), cell]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_site_from_tiny_notebooks_reuses_fresh_copies_and_executes_stale_ones(tmp_path):
    src, executed = tmp_path / "nb", tmp_path / "executed"
    a = _tiny_notebook(src / "00_a.ipynb", "00 · Alpha", "learn `a` **well**", "print(6 * 7)")
    b = _tiny_notebook(src / "01_b.ipynb", "01 · Beta", "learn b", "print(6 * 9)")
    c = _tiny_notebook(src / "02_c.ipynb", "02 · Gamma", "learn c", "print(1)")
    # fresh executed copies (newer than their sources) for a and c: reused, not re-run
    out = [nbformat.v4.new_output("stream", name="stdout", text="REUSED-OUTPUT\n")]
    for s in (a, c):
        _tiny_notebook(executed / s.name, notebook_info(s).title, "x", "print(0)", outputs=out)
    later = time.time() + 5
    for s in (a, c):
        os.utime(executed / s.name, (later, later))
    index = build_site(tmp_path / "site", notebooks=src, executed=executed, quiet=True)
    _check_site(index, [a, b, c])
    assert "REUSED-OUTPUT" in (tmp_path / "site" / "00_a.html").read_text()
    assert "54" in (tmp_path / "site" / "01_b.html").read_text(), "b had no executed copy: it was executed"
    assert (executed / "01_b.ipynb").exists()
    assert "<code>a</code>" in index.read_text() and "<strong>well</strong>" in index.read_text()


def test_notebook_info_of_the_start_notebook():
    info = notebook_info(ROOT / "notebooks" / "00_start_here.ipynb")
    assert info.title.startswith("00 · Start here")
    assert len(info.goals) >= 3 and info.time and info.prerequisites


@pytest.mark.notebooks
def test_make_site_links_every_notebook():
    """The real site (build/site), from build/notebooks-smoke/ when fresh, else executed in smoke mode."""
    sources = list_notebooks(ROOT / "notebooks")
    index = build_site(ROOT / "build" / "site", notebooks=ROOT / "notebooks",
                       executed=ROOT / "build" / "notebooks-smoke", timeout=600)
    _check_site(index, sources)
