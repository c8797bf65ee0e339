"""Drive the notebooks in a real JupyterLab with headless Chromium (Playwright).

Used by ``tests/test_zz_browser.py``; also runnable by hand::

    python -m icp_course.labcheck notebooks/00_start_here.ipynb [...] --screenshots build/screenshots

For each notebook: open it in JupyterLab, wait for the kernel, *Run All Cells*, wait until
every cell ran, fail on error outputs or "Error displaying widget"; then, for **every**
``.icp-explorer`` widget, move its first control (slider, dropdown, toggle buttons, radio
buttons, checkbox, or type into a text box) — or each of its controls when the explorer also
has the class ``icp-explorer-each-control`` — and wait until the output it drives changes,
save a screenshot per explorer (``<notebook>.png`` for the first, ``<notebook>-explorer<N>.png``
for the N-th) and shut the kernel down.

The server runs on 127.0.0.1 with a free port and a random token, with a throw-away
settings directory: news and update checks off, autosave off (the committed notebooks are
never written; if JupyterLab saved one anyway, the check restores it — unless its cells
were edited meanwhile, which it reports and leaves alone), and no
notebook windowing (every cell stays in the DOM). Chromium resolves no host name, so
nothing outside this machine is contacted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost"]

USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}

# What counts as an error output (JupyterLab renders error outputs with the stderr mime
# type, like warnings; these patterns tell a traceback from a warning).
_ERROR_PATTERNS = [r"Traceback \(most recent call last\)", r"^\s*Cell In\[\d+\], line \d+",
                   r"^-{40,}\s*$", r"^\w*(Error|Exception|Interrupt)(:|\s*$)"]
ERROR_RE = re.compile("|".join(f"(?:{p})" for p in _ERROR_PATTERNS), re.M)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def have_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server for the browser check (context manager)."""

    def __init__(self, root: str | Path, *, jupyter: str | Path | None = None, env: dict | None = None,
                 start_timeout: float = 120.0):
        self.root = Path(root).resolve()
        self.jupyter = str(jupyter or Path(sys.executable).with_name("jupyter"))
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._tmp = None

    # -- REST -------------------------------------------------------------------------------
    def api(self, method: str, path: str, timeout: float = 30.0):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def sessions(self) -> list[dict]:
        return self.api("GET", "/api/sessions")

    def shutdown_sessions(self) -> None:
        for s in self.sessions():
            try:
                self.api("DELETE", f"/api/sessions/{s['id']}")
            except urllib.error.URLError:
                pass

    def url(self, rel_path: str) -> str:
        return f"{self.base}/lab/tree/{rel_path}?token={self.token}&reset"

    def log_tail(self, n: int = 40) -> str:
        if not self._tmp:
            return ""
        log = Path(self._tmp.name) / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "LabServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="icp-lab-")
        tmp = Path(self._tmp.name)
        settings = tmp / "user-settings"
        for rel, value in USER_SETTINGS.items():
            f = settings / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        (tmp / "workspaces").mkdir()
        (tmp / "config").mkdir()
        env = dict(os.environ)
        env.update({"JUPYTER_CONFIG_DIR": str(tmp / "config"), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        cmd = [self.jupyter, "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
               f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}",  # no .ipynb_checkpoints in the repo
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "getuid") and os.getuid() == 0:
            cmd.append("--allow-root")
        self._log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"jupyter lab did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.shutdown_sessions()
            except Exception:  # noqa: BLE001 - best effort
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def launch_browser(playwright, *, headless: bool = True):
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium not found on PATH (Debian: apt-get install chromium; `make browser`)")
    return playwright.chromium.launch(executable_path=exe, headless=headless, args=CHROMIUM_ARGS)


@dataclass
class NotebookCheck:
    name: str
    seconds: float = 0.0
    run_seconds: float = 0.0
    widget_seconds: float = 0.0
    control: str = ""
    screenshot: str | None = None
    controls: list[str] = field(default_factory=list)     # "explorer N: <control moved> → output changed"
    screenshots: list[str] = field(default_factory=list)  # one per explorer
    problems: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        head = (f"{self.name}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f} s "
                f"(run all {self.run_seconds:.1f} s, widget {self.widget_seconds:.1f} s, control {self.control or '-'})")
        lines = [head] + [f"  · {c}" for c in self.controls] + [f"  - {p}" for p in self.problems]
        if self.problems and self.console_errors:
            lines.append("  browser console errors: " + " | ".join(self.console_errors[-5:]))
        return "\n".join(lines)


_JS_PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
                      .map(e => e.textContent.trim())"""

_JS_OUTPUTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')).map(e => ({
    mime: e.getAttribute('data-mime-type') || '', text: (e.innerText || '').slice(0, 4000)}))"""

# The explorer's rendered result (not its controls): output areas, HTML widgets, images.
_JS_SIGNATURE = """(root) => {
    const parts = [];
    root.querySelectorAll('.jp-OutputArea-output, .widget-html-content, .widget-htmlmath-content').forEach(
        e => parts.push((e.innerText || '').trim()));
    root.querySelectorAll('img').forEach(e => parts.push('img:' + e.src.length + ':' + e.src.slice(-200)));
    root.querySelectorAll('svg').forEach(e => parts.push('svg:' + e.innerHTML.length));
    return parts.join('\\n');
}"""

# Every control of an explorer, in document order: marks each with data-icp-control="<index>"
# and returns their kinds.
_CONTROL_KINDS = ['widget-slider', 'widget-dropdown', 'widget-toggle-buttons', 'widget-radio', 'widget-checkbox',
                  'widget-text', 'widget-textarea']
_JS_CONTROLS = """(root) => {
    const kinds = %s;
    const out = [];
    root.querySelectorAll(kinds.map(k => '.' + k).join(', ')).forEach(el => {
        const kind = kinds.find(k => el.classList.contains(k));
        if (!kind) return;
        el.setAttribute('data-icp-control', String(out.length));
        out.push(kind);
    });
    return out;
}""" % json.dumps(_CONTROL_KINDS)


def _wait(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _session_state(server: LabServer, rel_path: str) -> str | None:
    try:
        for s in server.sessions():
            if s.get("path") == rel_path:
                return s["kernel"]["execution_state"]
    except (urllib.error.URLError, OSError, KeyError):
        return None
    return None


def _error_outputs(page) -> list[str]:
    found = []
    for o in page.evaluate(_JS_OUTPUTS):
        text = o["text"]
        if "Error displaying widget" in text:
            found.append(f"widget failed to render: {text[:300]!r}")
        elif "application/vnd.jupyter.stderr" in o["mime"] and ERROR_RE.search(text):
            found.append(f"error output: {text[:600]}")
    body = page.evaluate("() => document.body.innerText")
    if "Error displaying widget" in body and not any("widget" in f for f in found):
        found.append("'Error displaying widget' appears on the page")
    return found


def _move_control(page, explorer, kind: str, index: int = 0) -> str:
    ctl = explorer.locator(f"[data-icp-control='{index}']").first
    if kind == "widget-dropdown":
        select = ctl.locator("select").first
        n = select.locator("option").count()
        if n < 2:
            raise AssertionError("the explorer's first dropdown has fewer than two options")
        current = select.evaluate("s => s.selectedIndex")
        target = (current + 1) % n
        select.select_option(index=target)
        return f"dropdown: option {current} -> {target} of {n}"
    if kind == "widget-slider":
        handle = ctl.locator(".noUi-handle").first
        readout = ctl.locator(".widget-readout").first
        before = readout.inner_text() if readout.count() else ""
        handle.focus()
        handle.press("ArrowRight")
        time.sleep(0.3)
        after = readout.inner_text() if readout.count() else ""
        if after == before:  # at the maximum: go the other way
            handle.press("ArrowLeft")
            time.sleep(0.3)
            handle.press("ArrowLeft")
            after = readout.inner_text() if readout.count() else ""
        return f"slider: {before} -> {after}"
    if kind == "widget-toggle-buttons":
        btn = ctl.locator("button:not(.mod-active)").first
        label = btn.inner_text()
        btn.click()
        return f"toggle buttons: -> {label}"
    if kind == "widget-radio":
        inp = ctl.locator("input:not(:checked)").first
        inp.check()
        return "radio buttons: next option"
    if kind == "widget-checkbox":
        ctl.locator("input").first.click()
        return "checkbox: toggled"
    if kind in ("widget-text", "widget-textarea"):
        box = ctl.locator("textarea" if kind == "widget-textarea" else "input").first
        before = box.input_value()
        after = (before + " again") if before else "a new text"
        box.fill(after)
        box.press("Tab" if kind == "widget-textarea" else "Enter")  # continuous_update=False: syncs on Enter / blur
        return f"text box: {before!r} -> {after!r}"
    raise AssertionError(f"unsupported control {kind}")


def check_notebook(page, server: LabServer, path: str | Path, *, screenshot: str | Path | None = None,
                   run_timeout: float = 360.0, widget_timeout: float = 180.0) -> NotebookCheck:
    """Open ``path`` (inside ``server.root``) in JupyterLab and check it; never raises for notebook problems."""
    path = Path(path).resolve()
    rel = path.relative_to(server.root).as_posix()
    res = NotebookCheck(path.name)
    original = path.read_bytes()
    t0 = time.perf_counter()
    page.on("pageerror", lambda e: res.console_errors.append(str(e)[:300]))
    try:
        _check(page, server, rel, res, screenshot, run_timeout, widget_timeout)
    except Exception as e:  # noqa: BLE001 - reported as a problem with context
        res.problems.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if screenshot and res.screenshot is None:
            try:
                page.screenshot(path=str(screenshot))
                res.screenshot = str(screenshot)
            except Exception:  # noqa: BLE001
                pass
    finally:
        try:
            for s in server.sessions():
                if s.get("path") == rel:
                    server.api("DELETE", f"/api/sessions/{s['id']}")
        except Exception as e:  # noqa: BLE001
            res.problems.append(f"could not shut the kernel down: {e}")
        if path.read_bytes() != original:
            if _same_sources(original, path.read_bytes()):  # JupyterLab saved our run: take its outputs out
                path.write_bytes(original)
                res.problems.append("JupyterLab wrote outputs to the notebook file (restored it); autosave should be off")
            else:  # someone edited the notebook meanwhile: never overwrite their work
                res.problems.append("the notebook changed on disk during the check (edited meanwhile?); "
                                    "left as it is — rerun the check")
    res.seconds = time.perf_counter() - t0
    return res


def _same_sources(a: bytes, b: bytes) -> bool:
    """Whether two notebook files have the same cells (types and sources), outputs aside."""
    try:
        cells = [[(c.get("cell_type"), "".join(c.get("source", ""))) for c in json.loads(x).get("cells", [])]
                 for x in (a, b)]
    except ValueError:
        return False
    return cells[0] == cells[1]


def _check(page, server, rel, res, screenshot, run_timeout, widget_timeout) -> None:
    page.goto(server.url(rel), wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    state = _wait(lambda: _session_state(server, rel) == "idle", 180)
    if not state:
        raise AssertionError(f"the kernel did not become idle within 180 s (state {_session_state(server, rel)})")
    try:  # collapse the file browser: more room for the notebook in the screenshot
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click(timeout=5_000)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    n_code = len(page.evaluate(_JS_PROMPTS))
    if n_code == 0:
        raise AssertionError("no code cells rendered")
    # Run > Run All Cells
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all'], "
                 ".lm-Menu-item[data-command='notebook:run-all-cells']").first.click()
    t_run = time.perf_counter()

    def finished():
        prompts = page.evaluate(_JS_PROMPTS)
        if any("*" in p for p in prompts):
            return False
        numbered = sum(bool(re.search(r"\[\d+\]", p)) for p in prompts)
        return numbered == len(prompts) or (numbered > 0 and _error_outputs(page))

    done = _wait(finished, run_timeout, interval=1.0)
    res.run_seconds = time.perf_counter() - t_run
    prompts = page.evaluate(_JS_PROMPTS)
    if not done:
        raise AssertionError(f"Run All did not finish within {run_timeout:.0f} s; prompts: {' '.join(prompts)}")
    _wait(lambda: _session_state(server, rel) == "idle", 60)
    errors = _error_outputs(page)
    unrun = [i for i, p in enumerate(prompts) if not re.search(r"\[\d+\]", p)]
    if unrun:
        res.problems.append(f"{len(unrun)} of {len(prompts)} code cells did not run (first: code cell #{unrun[0]})")
    res.problems.extend(errors)
    if errors or unrun:
        if screenshot:
            page.screenshot(path=str(screenshot))
            res.screenshot = str(screenshot)
        return
    # Every explorer: move its first control (or each one), wait for its output to change.
    explorers = page.locator(".icp-explorer")
    try:
        explorers.first.wait_for(state="attached", timeout=60_000)
    except Exception:  # noqa: BLE001
        raise AssertionError("no widget with class 'icp-explorer' rendered (explorer factories call "
                             "box.add_class('icp-explorer'))") from None
    n_explorers = explorers.count()
    t_w = time.perf_counter()
    for e in range(n_explorers):
        explorer = explorers.nth(e)
        explorer.scroll_into_view_if_needed(timeout=30_000)
        kinds = explorer.evaluate(_JS_CONTROLS)
        if not kinds:
            raise AssertionError(f"explorer {e + 1} has no slider, dropdown, toggle buttons, radio buttons, checkbox "
                                 "or text box")
        each = "icp-explorer-each-control" in (explorer.get_attribute("class") or "")
        for index in (range(len(kinds)) if each else [0]):
            _move_and_wait(page, server, rel, res, explorer, e, kinds[index], index, widget_timeout)
        explorer.scroll_into_view_if_needed(timeout=30_000)
        if screenshot:
            shot = Path(screenshot) if e == 0 else Path(screenshot).with_name(
                f"{Path(screenshot).stem}-explorer{e + 1}{Path(screenshot).suffix}")
            page.screenshot(path=str(shot))
            res.screenshots.append(str(shot))
            if e == 0:
                res.screenshot = str(shot)
    res.widget_seconds = time.perf_counter() - t_w
    res.problems.extend(_error_outputs(page))


def _move_and_wait(page, server, rel, res, explorer, e: int, kind: str, index: int, widget_timeout: float) -> None:
    """Move one control of explorer ``e`` and wait until the explorer's rendered output changes."""
    last = [explorer.evaluate(_JS_SIGNATURE)]  # let the previous render settle: unchanged for 0.5 s, kernel idle

    def settled() -> bool:
        now = explorer.evaluate(_JS_SIGNATURE)
        same, last[0] = now == last[0], now
        return same and _session_state(server, rel) == "idle"

    _wait(settled, 30)
    before = explorer.evaluate(_JS_SIGNATURE)
    what = _move_control(page, explorer, kind, index)
    if not res.control:
        res.control = what
    changed = _wait(lambda: explorer.evaluate(_JS_SIGNATURE) != before, widget_timeout, interval=0.5)
    if changed:  # wait for the callback to finish drawing
        _wait(lambda: _session_state(server, rel) == "idle", widget_timeout)
        time.sleep(0.5)
        res.controls.append(f"explorer {e + 1}: {what} → output changed")
    else:
        res.controls.append(f"explorer {e + 1}: {what} → NO CHANGE")
        res.problems.append(f"moving explorer {e + 1}'s control ({what}) did not change its output "
                            f"within {widget_timeout:.0f} s")


def check_notebooks(paths, *, root: str | Path, screenshots: str | Path | None = None,
                    env: dict | None = None, run_timeout: float = 360.0) -> list[NotebookCheck]:
    """One server and one browser for all ``paths``; returns one result per notebook."""
    from playwright.sync_api import sync_playwright

    results = []
    shots = Path(screenshots) if screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    env = {"ICP_SMOKE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    with LabServer(root, env=env) as server, sync_playwright() as pw:
        browser = launch_browser(pw)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            for p in paths:
                page = ctx.new_page()
                try:
                    shot = shots / f"{Path(p).stem}.png" if shots else None
                    r = check_notebook(page, server, p, screenshot=shot, run_timeout=run_timeout)
                finally:
                    page.close()
                print(r.report(), flush=True)
                results.append(r)
        finally:
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/NN_*.ipynb")
    ap.add_argument("--root", default=".", help="JupyterLab root (the repository)")
    ap.add_argument("--screenshots", default="build/screenshots")
    ap.add_argument("--timeout", type=float, default=360.0, help="seconds for Run All per notebook")
    args = ap.parse_args(argv)
    from icp_course.nbrun import list_notebooks

    paths = args.notebooks or list_notebooks(Path(args.root) / "notebooks")
    t0 = time.perf_counter()
    results = check_notebooks(paths, root=args.root, screenshots=args.screenshots, run_timeout=args.timeout)
    print(f"{sum(r.ok for r in results)}/{len(results)} notebooks ok in the browser; "
          f"total {time.perf_counter() - t0:.1f} s")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
