"""The static site (`make site`) opened from file:// in headless chromium with the network cut off.

Every request whose address is not ``file:`` is aborted and counted (``page.route``), and so is
any other request that leaves the folder (``request`` events). On the index and on every page,
MathJax (the site's own copy) must typeset the formulas — ``mjx-container`` elements appear,
no TeX error (``mjx-merror``) — and no page may ask for anything outside: the count must be 0.
A local file that fails to load (a MathJax component left out of the copy) fails the test too.

The site is built as ``make site`` builds it (default-size copies when fresh, else the smoke
copies in build/notebooks-smoke/, which ``test_notebooks.py`` and ``test_zz_site.py`` leave
behind; a stale or missing copy is executed in smoke mode first). Screenshots of the index
and of each page's top go to build/screenshots/site-*.png. Without chromium or Python
playwright the test skips, except under ``CI=true``, where it fails.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from icp_course.labcheck import find_chromium, have_playwright, launch_browser
from icp_course.nbrun import list_notebooks
from icp_course.site import build_site

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
MATH = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")

_REPORT: list[str] = []


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if _REPORT:
            terminalreporter.section("static site offline (chromium, file://, network blocked)")
            for line in _REPORT:
                terminalreporter.write_line(line)


def _require_browser() -> None:
    missing = [what for what, ok in (("Python playwright", have_playwright()),
                                     ("chromium (apt-get install chromium; `make browser`)", find_chromium() is not None))
               if not ok]
    if missing:
        msg = "offline site test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg + " (CI=true: a missing browser fails the run)", pytrace=False)
        pytest.skip(msg)


def _has_math(notebook: Path) -> bool:
    nb = nbformat.read(notebook, as_version=4)
    return any(c.cell_type == "markdown" and MATH.search(c.source) for c in nb.cells)


@pytest.fixture(scope="module")
def site(request):
    _require_browser()
    if not request.config.pluginmanager.has_plugin("icp-site-offline-summary"):
        request.config.pluginmanager.register(_Summary(), "icp-site-offline-summary")
    return build_site(ROOT / "build" / "site", notebooks=ROOT / "notebooks", default_copies=ROOT / "build" / "notebooks",
                      executed=ROOT / "build" / "notebooks-smoke", timeout=600, quiet=True)


def test_site_renders_its_formulas_offline_and_asks_nothing_from_outside(site):
    from playwright.sync_api import sync_playwright

    sources = list_notebooks(ROOT / "notebooks")
    pages = [site] + [site.parent / (p.stem + ".html") for p in sources]
    SHOTS.mkdir(parents=True, exist_ok=True)
    aborted: list[str] = []      # non-file requests, aborted by the route
    outside: list[str] = []      # every request to a non-local address, however it was made
    failed: list[str] = []       # local files that did not load
    rendered: dict[str, tuple[int, int]] = {}
    pw = sync_playwright().start()
    try:
        browser = launch_browser(pw)
        context = browser.new_context(viewport={"width": 1200, "height": 900})

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                aborted.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("request", lambda q: None if q.url.startswith(LOCAL_SCHEMES) else outside.append(q.url))
        page.on("requestfailed", lambda q: failed.append(q.url) if q.url.startswith("file:") else None)
        for html_file in pages:
            page.goto(html_file.as_uri(), wait_until="load")
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
            rendered[html_file.name] = tuple(page.evaluate(
                "async () => { await MathJax.startup.promise;"
                " return [document.querySelectorAll('mjx-container').length,"
                "         document.querySelectorAll('mjx-merror').length]; }"))
            page.screenshot(path=str(SHOTS / f"site-{html_file.stem}.png"))
        browser.close()
    finally:
        pw.stop()
    _REPORT.extend(f"{name:<48} {n:5d} formulas rendered, {err} TeX errors" for name, (n, err) in rendered.items())
    _REPORT.append(f"outside requests: {len(set(aborted) | set(outside))}; local files that failed to load: {len(failed)}")
    assert not aborted and not outside, f"pages asked for outside addresses: {sorted(set(aborted) | set(outside))[:5]}"
    assert not failed, f"local files that did not load: {sorted(set(failed))[:5]}"
    assert rendered["index.html"][0] > 0, "the index typesets the math of its learning goals"
    with_math = [p.stem + ".html" for p in sources if _has_math(p)]
    assert with_math, "at least one notebook has math"
    for name in with_math:
        assert rendered[name][0] > 0, f"{name}: its formulas were not typeset"
    assert all(err == 0 for _, err in rendered.values()), f"TeX errors: {rendered}"
