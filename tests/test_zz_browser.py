"""Every notebook in a real JupyterLab, driven by headless Chromium (Playwright).

One JupyterLab server (127.0.0.1, free port, random token, ICP_SMOKE=1, HF_HUB_OFFLINE=1)
and one browser serve all notebooks. For each: Run All Cells, no error output and no
"Error displaying widget"; for every ``.icp-explorer``, move its first control (every control
of an explorer marked ``icp-explorer-each-control``; text boxes are typed into) and see its
output change; save ``build/screenshots/<notebook>.png`` (first explorer) and
``<notebook>-explorer<N>.png`` (the N-th); shut the kernel down.

Named ``test_zz_*`` so it runs after ``test_notebooks.py``. Without chromium or Python
playwright the tests skip, except under ``CI=true``, where they fail.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest

from icp_course.labcheck import LabServer, check_notebook, find_chromium, have_playwright, launch_browser
from icp_course.nbrun import list_notebooks

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = list_notebooks(ROOT / "notebooks")
SHOTS = ROOT / "build" / "screenshots"
SELFTEST = ROOT / "build" / "browser-selftest"
RUN_TIMEOUT = float(os.environ.get("ICP_BROWSER_TIMEOUT", "420"))  # seconds for Run All, per notebook

_TIMES: dict[str, float] = {}
_T0: list[float] = []


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if not _TIMES:
            return
        tr = terminalreporter
        tr.section("browser test (JupyterLab + headless chromium, smoke mode)")
        for name, s in _TIMES.items():
            tr.write_line(f"{name:<48} {s:7.1f} s")
        total = (_T0[1] - _T0[0]) if len(_T0) == 2 else sum(_TIMES.values())
        tr.write_line(f"{'total (server + browser + notebooks)':<48} {total:7.1f} s")
        tr.write_line(f"screenshots: {SHOTS}")


def _require_browser() -> None:
    missing = [what for what, ok in (("Python playwright", have_playwright()),
                                     ("chromium (apt-get install chromium; `make browser`)", find_chromium() is not None))
               if not ok]
    if missing:
        msg = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg + " (CI=true: a missing browser fails the run)", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def lab(request):
    _require_browser()
    from playwright.sync_api import sync_playwright

    if not request.config.pluginmanager.has_plugin("icp-browser-summary"):
        request.config.pluginmanager.register(_Summary(), "icp-browser-summary")
    _T0[:] = [time.perf_counter()]
    SHOTS.mkdir(parents=True, exist_ok=True)
    server = LabServer(ROOT, env={"ICP_SMOKE": "1", "HF_HUB_OFFLINE": "1"}).__enter__()
    pw = sync_playwright().start()
    try:
        browser = launch_browser(pw)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield server, context
        browser.close()
    finally:
        pw.stop()
        server.__exit__(None, None, None)
        _T0.append(time.perf_counter())


def _check(lab, path: Path, shot: Path | None):
    server, context = lab
    page = context.new_page()
    try:
        return check_notebook(page, server, path, screenshot=shot, run_timeout=RUN_TIMEOUT)
    finally:
        page.close()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_in_jupyterlab(lab, path):
    shot = SHOTS / f"{path.stem}.png"
    shot.unlink(missing_ok=True)
    res = _check(lab, path, shot)
    _TIMES[path.name] = res.seconds
    assert res.ok, res.report()
    assert res.control, "a control of the explorer was moved"
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot at {shot}"
    assert res.controls and all(c.endswith("output changed") for c in res.controls), res.controls
    assert all(Path(p).exists() for p in res.screenshots), res.screenshots
    if path.name.startswith("04_"):
        # the token explorer, then probes / aggregation / baseline of the reliability explorer, then a typed demonstration
        assert len(res.screenshots) == 3, res.screenshots
        kinds = [c.split(": ", 2)[1] for c in res.controls]
        assert kinds == ["dropdown", "slider", "toggle buttons", "toggle buttons", "text box"], res.controls
    print(res.report())


def _write_nb(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


_EXPLORER = '''import ipywidgets as W
from IPython.display import display
slider = W.IntSlider(value=3, min=0, max=10, description="n", continuous_update=False)
out = W.Output()
def _draw(*_):
    with out:
        out.clear_output(wait=True)
        print(f"n squared = {slider.value ** 2}")
slider.observe(_draw, names="value")
_draw()
box = W.VBox([slider, out])
box.add_class("icp-explorer")
display(box)'''


def test_checker_passes_a_good_notebook_with_a_warning_and_a_slider(lab):
    """Warnings on stderr are not errors; a slider explorer is moved and its output changes."""
    path = _write_nb(SELFTEST / "good.ipynb", ['import warnings; warnings.warn("harmless")', _EXPLORER])
    res = _check(lab, path, None)
    _TIMES["(self-test) good.ipynb"] = res.seconds
    assert res.ok, res.report()
    assert res.control.startswith("slider: 3 -> 4"), res.control


_TEXT_EXPLORER = '''import ipywidgets as W
from IPython.display import display
text = W.Text(value="abc", description="word", continuous_update=False)
shown = W.HTML()
def _show(*_):
    shown.value = f"reversed: {text.value[::-1]}"
text.observe(_show, names="value")
_show()
text_box = W.VBox([text, shown])
text_box.add_class("icp-explorer")
display(text_box)'''


def test_checker_moves_every_explorer_and_types_into_text_boxes(lab):
    """Two explorers: both are moved (the second one by typing); a screenshot for each."""
    path = _write_nb(SELFTEST / "two.ipynb", [_EXPLORER, _TEXT_EXPLORER])
    shot = SELFTEST / "two.png"
    res = _check(lab, path, shot)
    _TIMES["(self-test) two.ipynb"] = res.seconds
    assert res.ok, res.report()
    assert [c.split(": ", 2)[1] for c in res.controls] == ["slider", "text box"], res.controls
    assert res.screenshots == [str(shot), str(SELFTEST / "two-explorer2.png")]


def test_checker_reports_a_failing_cell(lab):
    """The check can fail: a raising cell is reported, and the cells after it did not run."""
    path = _write_nb(SELFTEST / "bad.ipynb", ['print("fine")', "1 / 0", 'print("never")', _EXPLORER])
    res = _check(lab, path, None)
    _TIMES["(self-test) bad.ipynb"] = res.seconds
    assert not res.ok
    text = "\n".join(res.problems)
    assert "ZeroDivisionError" in text and "error output" in text, text
    assert "2 of 4 code cells did not run" in text, text
