"""`make site`: static HTML of the executed notebooks with an index and prev/next links.

Named ``test_zz_*`` so that, in ``make test``, it runs after ``test_notebooks.py`` and
reuses the executed copies in build/notebooks-smoke/. The pages must load nothing from
outside the site's folder (MathJax is the site's own copy; ``test_zz_site_offline.py``
opens them in chromium with the network blocked).
"""
from __future__ import annotations

import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from icp_course.nbrun import list_notebooks
from icp_course.site import (MATHJAX_SCRIPT, STATIC, WIDGET_NOTE, WIDGET_STATE, WIDGET_VIEW, build_site, inline_markdown,
                              notebook_info, outside_references)

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


def _check_offline(site: Path) -> None:
    """Every page (and the index) loads MathJax from the site's folder and nothing from outside."""
    mathjax = f'src="{STATIC}/{Path(MATHJAX_SCRIPT).name}"'
    assert (site / STATIC / Path(MATHJAX_SCRIPT).name).stat().st_size > 1_000_000
    assert "Apache License" in (site / STATIC / "LICENSE").read_text()
    for page in sorted(site.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        assert outside_references(text) == [], f"{page.name} loads from outside: {outside_references(text)[:3]}"
        assert mathjax in text, f"{page.name} loads the site's own MathJax"
        assert "require.js" not in text and "embed-amd" not in text and WIDGET_STATE not in text, page.name


def _check_site(index: Path, sources: list[Path]) -> None:
    site = index.parent
    _check_offline(site)
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
    assert nbformat.read(executed / "01_b.ipynb", as_version=4).metadata["icp_course"]["mode"] == "smoke"
    assert "<code>a</code>" in index.read_text() and "<strong>well</strong>" in index.read_text()


def _widget_outputs():
    """A saved explorer (VBox: slider, HTML, Output showing a figure's stand-in) and a tqdm bar."""
    st = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_html", "IPY_MODEL_out"]}},
        "slider": {"model_name": "FloatSliderModel", "state": {"description": "η", "value": 2.5}},
        "html": {"model_name": "HTMLModel", "state": {"value": "<b>WIDGET-HTML</b>"}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "stream", "name": "stdout", "text": "LAST-OUTPUT\n"},
            {"output_type": "stream", "name": "stderr", "text": "WIDGET-WARNING\n"}]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p", "IPY_MODEL_lbl"]}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": 1.0}},
        "lbl": {"model_name": "HTMLModel", "state": {"value": "PROGRESS-BAR 100%"}},
    }
    view = lambda mid: nbformat.v4.new_output("display_data", data={  # noqa: E731
        WIDGET_VIEW: {"model_id": mid, "version_major": 2, "version_minor": 0}, "text/plain": "VBox(children=...)"})
    return [view("bar"), view("box")], {WIDGET_STATE: {"state": st, "version_major": 2, "version_minor": 0}}


def test_site_pages_load_nothing_from_outside_and_show_what_a_reader_needs(tmp_path):
    """MathJax from the site's folder (index included), no require.js / widget manager / outside image;
    hide-input cells show only their output; stderr is dropped; a widget becomes a note and its last output."""
    src, executed = tmp_path / "nb", tmp_path / "executed"
    a = _tiny_notebook(src / "00_a.ipynb", "00 · Alpha", "set up $d=10$ and $w\\sim\\mathcal N(0,I)$", "print(1)")
    nb = nbformat.read(a, as_version=4)
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.example/x)"
    nb.cells[0].source = (badge + "\n\n" + nb.cells[0].source + "\n\nThe loss $\\ell(w)=\\tfrac12\\|Xw-y\\|^2$.")
    md = nbformat.v4.new_code_cell('display(Markdown(f"**SUMMARY-SOURCE** {x}"))', metadata={"tags": ["hide-input"]})
    md.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": "**SUMMARY-TEXT** with $x^2$",
                                                               "text/plain": "<Markdown>"})]
    noisy = nbformat.v4.new_code_cell("import warnings; warnings.warn('x'); print('STDOUT-KEPT')")
    noisy.outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: LIBRARY-WARNING\n"),
                     nbformat.v4.new_output("stream", name="stdout", text="STDOUT-KEPT\n")]
    widget = nbformat.v4.new_code_cell("display(explorer)")
    widget.outputs, nb.metadata["widgets"] = _widget_outputs()
    nb.cells += [md, noisy, widget]
    executed.mkdir(parents=True)
    nbformat.write(nb, executed / a.name)
    later = time.time() + 5
    os.utime(executed / a.name, (later, later))
    index = build_site(tmp_path / "site", notebooks=src, executed=executed, quiet=True)
    site = index.parent
    _check_offline(site)
    page = (site / "00_a.html").read_text()
    assert "$d=10$" in index.read_text() and "$\\ell(w)=" in page, "the math is left for MathJax to typeset"
    assert "Open In Colab" in page and "colab-badge.svg" not in page
    assert "SUMMARY-TEXT" in page and "SUMMARY-SOURCE" not in page, "a hide-input cell shows only its output"
    assert "STDOUT-KEPT" in page and "LIBRARY-WARNING" not in page and "WIDGET-WARNING" not in page
    assert WIDGET_NOTE in page and "η = 2.5" in page and "WIDGET-HTML" in page and "LAST-OUTPUT" in page
    assert "PROGRESS-BAR" not in page and "VBox(children" not in page


def test_site_prefers_fresh_default_copies_and_labels_every_page_with_its_mode(tmp_path):
    src, default, smoke = tmp_path / "nb", tmp_path / "default", tmp_path / "smoke"
    books = [_tiny_notebook(src / f"0{i}_{n}.ipynb", f"0{i} · {n}", "g", "print(0)") for i, n in enumerate("abcd")]
    later = time.time() + 5

    def copy(folder, s, text, mode=None, when=later):
        out = [nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]
        path = _tiny_notebook(folder / s.name, notebook_info(s).title, "x", "print(0)", outputs=out)
        if mode:
            nb = nbformat.read(path, as_version=4)
            nb.metadata["icp_course"] = {"mode": mode, "seconds": 42.0, "completed": True}
            nbformat.write(nb, path)
        os.utime(path, (when, when))

    a, b, c, d = books
    copy(default, a, "A-DEFAULT", "default")             # fresh default copy: used
    copy(smoke, a, "A-SMOKE", "smoke")
    copy(default, b, "B-STALE-DEFAULT", "default", when=time.time() - 3600)   # older than its notebook: not used
    copy(smoke, b, "B-SMOKE", "smoke")
    copy(default, c, "C-UNRECORDED")                     # no recorded mode: not trusted as default
    copy(smoke, c, "C-SMOKE")                            # the smoke folder's copies are smoke
    copy(default, d, "D-SMOKE-IN-DEFAULT", "smoke")      # ICP_SMOKE=1 make notebooks: labelled smoke
    index = build_site(tmp_path / "site", notebooks=src, executed=smoke, default_copies=default, quiet=True)
    site = index.parent
    pages = {s.stem[:2]: (site / (s.stem + ".html")).read_text() for s in books}
    assert "A-DEFAULT" in pages["00"] and 'class="icp-mode default"' in pages["00"] and "Smoke render" not in pages["00"]
    for key, text in (("01", "B-SMOKE"), ("02", "C-SMOKE"), ("03", "D-SMOKE-IN-DEFAULT")):
        assert text in pages[key] and 'class="icp-mode smoke"' in pages[key] and "Smoke render" in pages[key], key
    idx = index.read_text()
    assert re.findall(r'data-mode="(\w+)"', idx) == ["default", "smoke", "smoke", "smoke"]
    assert "1 of 4 pages" in idx


def test_notebook_info_of_the_start_notebook():
    info = notebook_info(ROOT / "notebooks" / "00_start_here.ipynb")
    assert info.title.startswith("00 · Start here")
    assert len(info.goals) >= 3 and info.time and info.prerequisites


@pytest.mark.notebooks
def test_make_site_links_every_notebook():
    """The real site (build/site), as `make site` builds it: from default-size copies in build/notebooks/
    when fresh, else from build/notebooks-smoke/ (executed in smoke mode when stale); every page says its mode."""
    sources = list_notebooks(ROOT / "notebooks")
    index = build_site(ROOT / "build" / "site", notebooks=ROOT / "notebooks", default_copies=ROOT / "build" / "notebooks",
                       executed=ROOT / "build" / "notebooks-smoke", timeout=600)
    _check_site(index, sources)
    idx = index.read_text()
    for src in sources:
        page = (index.parent / (src.stem + ".html")).read_text()
        mode = "smoke" if 'class="icp-mode smoke"' in page else "default"
        assert f'class="icp-mode {mode}"' in page and f'data-mode="{mode}"><a href="{src.stem}.html"' in idx, src.name
