"""A static HTML site of the executed notebooks, with navigation, that works offline.

``python -m icp_course.site --out build/site [--default-copies build/notebooks]
[--executed build/notebooks-smoke] [--mathjax DIR]``

Each page is rendered with nbconvert (lab template) from an executed copy of its notebook:
the default-size copy in ``--default-copies`` (``make notebooks``) when it is newer than the
source and records its mode, else the smoke-mode copy in ``--executed`` when it is newer,
else the notebook is executed there in smoke mode (``icp_course.nbrun.execute_notebook``).
Every page says at the top which mode it shows (a smoke render gets a banner), and so does
the index. ``index.html`` lists every notebook with its title, learning goals and time
estimate; every page has previous / index / next links.

Nothing is loaded from outside the site's folder: MathJax (v3, SVG output, from the npm
package ``mathjax`` that ``make mathjax`` unpacks into ``.venv/share/icp-course/``) is copied
into ``_static/mathjax/`` with its licence and typesets the pages and the index; require.js,
the widget embed script and mermaid are not loaded. Widgets are not embedded (their controls
would do nothing without a kernel): a widget output becomes a short note followed by what the
widget last showed (its HTML and Output children, from the saved widget state). Cells tagged
``hide-input`` show only their output; stderr (warnings, library and profiler chatter) is
dropped; outside images (the Colab badge) become their alt text. Used by ``make site``.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from icp_course.nbrun import execute_notebook, list_notebooks

MATHJAX_VERSION = "3.2.2"       # the npm package `mathjax` (Apache-2.0), unpacked by `make mathjax`
MATHJAX_SCRIPT = "es5/tex-svg-full.js"  # every TeX extension, SVG output: no font files to load
STATIC = "_static/mathjax"      # where the site keeps its copy

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_NOTE = "Interactive widget: run the notebook to use it."
HIDE_INPUT_TAGS = {"hide-input", "remove-input"}

STYLE = """
body.icp-index { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60rem;
  margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
.icp-index h1 { margin-bottom: .2rem; } .icp-index .sub { color: #555; margin-top: 0; }
.icp-index ol { padding-left: 1.2rem; } .icp-index li.nb { margin: 1.2rem 0; }
.icp-index li.nb > a { font-size: 1.15rem; font-weight: 600; }
.icp-index .time { color: #555; font-size: .9rem; }
nav.icp-nav { display: flex; justify-content: space-between; gap: 1rem; font-family: system-ui, sans-serif;
  padding: .6rem 1rem; background: #f3f5f8; border-bottom: 1px solid #d0d7de; font-size: .95rem; }
nav.icp-nav.bottom { border-top: 1px solid #d0d7de; border-bottom: none; margin-top: 2rem; }
nav.icp-nav a { text-decoration: none; color: #0b5cad; } nav.icp-nav span.none { color: #999; }
.icp-mode { font-family: system-ui, sans-serif; margin: .8rem 1rem; padding: .6rem .9rem; border-radius: 6px;
  font-size: .95rem; line-height: 1.45; }
.icp-mode.smoke { background: #fff4d6; border: 1px solid #e0b23c; color: #4a3800; }
.icp-mode.default { background: #eaf5ea; border: 1px solid #8cc08c; color: #1f3d1f; }
.icp-index .mode { font-size: .8rem; font-weight: 600; white-space: nowrap; padding: .05rem .45rem; border-radius: 4px; margin-left: .4rem; }
.icp-index .mode.smoke { background: #fff4d6; border: 1px solid #e0b23c; color: #4a3800; }
.icp-index .mode.default { background: #eaf5ea; border: 1px solid #8cc08c; color: #1f3d1f; }
.icp-widget-note { font-family: system-ui, sans-serif; font-size: .9rem; color: #555; font-style: italic;
  border-left: 3px solid #d0d7de; padding: .2rem .6rem; }
"""

# MathJax v3 configuration: the delimiters JupyterLab uses; its own script from the site's folder.
MATHJAX_HEAD = r"""<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'},
  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}
};
</script>
<script id="MathJax-script" defer src="@SRC@"></script>"""

# The lab template without anything fetched from a CDN: no require.js (no widget embedding, no
# JavaScript outputs here), no widget manager, no mermaid; MathJax from the site's own copy.
SITE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{{ resources.icp_mathjax_head }}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


@dataclass
class NotebookInfo:
    path: Path
    title: str
    goals: list[str] = field(default_factory=list)
    time: str = ""
    prerequisites: str = ""

    @property
    def page(self) -> str:
        return self.path.stem + ".html"


def notebook_info(path: str | Path) -> NotebookInfo:
    """Title, learning goals, prerequisites and time estimate from the first Markdown cell."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    src = first.source if first is not None else ""
    m = re.search(r"^#\s+(.+)$", src, re.M)
    title = m.group(1).strip() if m else path.stem
    goals: list[str] = []
    lines = src.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"learning goals", line, re.I):
            for nxt in lines[i + 1:]:
                item = re.match(r"^\s*[-*]\s+(.*)$", nxt)
                if item:
                    goals.append(item.group(1).strip())
                elif goals and nxt.strip() and nxt.startswith((" ", "\t")):  # continued bullet
                    goals[-1] += " " + nxt.strip()
                elif goals or (nxt.strip() and not nxt.strip().startswith("*")):
                    break
            break
    t = re.search(r"\*\*Time:?\*\*:?\s*(.+)$", src, re.M)
    pre = re.search(r"\*\*Prerequisites:?\*\*:?\s*(.+)$", src, re.M)
    return NotebookInfo(path, title, goals, t.group(1).strip() if t else "", pre.group(1).strip() if pre else "")


def inline_markdown(text: str) -> str:
    """Tiny Markdown-to-HTML for one line: escapes, then links, code, bold and italics.

    ``$...$`` stays as it is (escaped only), for MathJax to typeset."""
    parts = re.split(r"(\$[^$\n]+\$)", text)
    return "".join(html.escape(part, quote=False) if i % 2 else _inline_markup(part) for i, part in enumerate(parts))


def _inline_markup(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", out)
    return out


def _nav(infos: list[NotebookInfo], i: int, where: str) -> str:
    def link(j: int, arrow: str) -> str:
        if 0 <= j < len(infos):
            label = html.escape(infos[j].title)
            return (f'<a rel="{"prev" if j < i else "next"}" href="{infos[j].page}">'
                    f'{arrow if j < i else ""}{label}{arrow if j > i else ""}</a>')
        return '<span class="none">—</span>'

    return (f'<nav class="icp-nav {where}">{link(i - 1, "← ")}<a href="index.html">Index · all notebooks</a>'
            f'{link(i + 1, " →")}</nav>')


# -- MathJax: the site's own copy --------------------------------------------------------------

def default_mathjax_dir() -> Path:
    """Where ``make mathjax`` unpacks the npm package: ``<venv>/share/icp-course/mathjax-<version>``
    (``ICP_MATHJAX`` overrides)."""
    env = os.environ.get("ICP_MATHJAX")
    return Path(env) if env else Path(sys.prefix) / "share" / "icp-course" / f"mathjax-{MATHJAX_VERSION}"


def copy_mathjax(source: str | Path | None, site: Path) -> str:
    """Copy MathJax's script and licence into ``site/_static/mathjax/``; return the script's relative URL."""
    from icp_influence.errors import ConfigError

    source = Path(source) if source is not None else default_mathjax_dir()
    script, licence = source / MATHJAX_SCRIPT, source / "LICENSE"
    if not (script.is_file() and licence.is_file()):
        raise ConfigError(f"MathJax not found in {source} (needs {MATHJAX_SCRIPT} and LICENSE): run `make mathjax` "
                          f"(npm pack mathjax@{MATHJAX_VERSION}, unpacked there), or pass --mathjax DIR.")
    try:
        meta = json.loads((source / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    dest = site / STATIC
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(script, dest / script.name)
    shutil.copyfile(licence, dest / "LICENSE")
    (dest / "SOURCE.txt").write_text(
        f"MathJax {meta.get('version', '?')} ({meta.get('license', 'Apache-2.0')}; the licence is in LICENSE beside this "
        f"file): {MATHJAX_SCRIPT} of the npm package `{meta.get('name', 'mathjax')}`, copied here by icp_course.site "
        "so that the site typesets its formulas offline.\n", encoding="utf-8")
    return f"{STATIC}/{script.name}"


def mathjax_head(src: str) -> str:
    return MATHJAX_HEAD.replace("@SRC@", html.escape(src))


# -- what goes on a page ------------------------------------------------------------------------

def drop_stderr(nb) -> int:
    """Remove stream outputs on stderr (warnings, progress bars, profiler lines); returns how many."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            kept = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            n += len(cell.outputs) - len(kept)
            cell.outputs = kept
    return n


_CONTROL_LABEL = re.compile(r"(Slider|Dropdown|ToggleButtons|RadioButtons|Checkbox|Text|Select|ToggleButton)Model$")


def _widget_static(model_id: str, state: dict, seen: set, controls: list[str]) -> list:
    """What a saved widget last showed: its HTML values and its Output children's outputs, in order."""
    import nbformat

    model_id = model_id.removeprefix("IPY_MODEL_") if isinstance(model_id, str) else ""
    if not model_id or model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    name, st = model.get("model_name", ""), model.get("state", {})
    shown: list = []
    if name == "OutputModel":
        for o in st.get("outputs", []):
            o = dict(o)
            if WIDGET_VIEW in o.get("data", {}):
                shown += _widget_static(o["data"][WIDGET_VIEW].get("model_id", ""), state, seen, controls)
            elif o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue
            elif o.get("output_type") in ("display_data", "execute_result", "stream"):
                if o["output_type"] != "stream":
                    o.setdefault("metadata", {})
                if o["output_type"] == "execute_result":
                    o = {**{k: v for k, v in o.items() if k != "execution_count"}, "output_type": "display_data"}
                shown.append(nbformat.from_dict(o))
    elif name in ("HTMLModel", "HTMLMathModel") and str(st.get("value", "")).strip():
        shown.append(nbformat.v4.new_output("display_data", data={"text/html": st["value"]}))
    elif _CONTROL_LABEL.search(name) and st.get("description"):
        value = st.get("value")
        if value is None and "index" in st and st.get("_options_labels"):
            idx = st["index"]
            value = st["_options_labels"][idx] if isinstance(idx, int) and 0 <= idx < len(st["_options_labels"]) else None
        if value is not None:
            controls.append(f"{st['description'].rstrip(':')} = {value}")
    for child in st.get("children", []) or []:
        shown += _widget_static(child, state, seen, controls)
    return shown


def _is_progress_bar(model_id: str, state: dict) -> bool:
    """tqdm's notebook bar: a box of a progress model and HTML labels, nothing else."""
    box = state.get(model_id, {})
    kids = [state.get(str(c).removeprefix("IPY_MODEL_"), {}).get("model_name", "")
            for c in box.get("state", {}).get("children", []) or []]
    return (box.get("model_name") == "HBoxModel" and any(k.endswith("ProgressModel") for k in kids)
            and all(k.endswith("ProgressModel") or k in ("HTMLModel", "LabelModel") for k in kids))


def static_widgets(nb) -> int:
    """Replace every widget output by a note and what the widget last showed, drop progress bars (tqdm)
    and the saved widget state (nothing on the page renders widgets). Returns the number of widgets replaced."""
    import nbformat

    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            shows = out.get("output_type") in ("display_data", "execute_result")
            view = out.get("data", {}).get(WIDGET_VIEW) if shows else None
            if view is None:
                outputs.append(out)
                continue
            if _is_progress_bar(view.get("model_id", ""), state):
                continue            # a library's progress bar (tqdm): chatter, like stderr
            n += 1
            controls: list[str] = []
            shown = _widget_static(view.get("model_id", ""), state, set(), controls)
            note = WIDGET_NOTE + (" Below, what it showed last" if shown else "")
            if shown and controls:
                note += " (" + ", ".join(controls[:6]) + ")"
            note += "." if shown else ""
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/html": f'<div class="icp-widget-note">{html.escape(note)}</div>', "text/plain": note}))
            outputs += shown
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return n


_OUTSIDE_IMG = re.compile(r"<img\b[^>]*?\bsrc=[\"']https?://[^>]*>", re.I)


def _offline_images(body: str) -> str:
    """An image from outside (the Colab badge) becomes its alt text: the page loads nothing from outside."""
    def alt(m: re.Match) -> str:
        a = re.search(r"\balt=[\"']([^\"']*)[\"']", m.group(0))
        return f"<span>{a.group(1)}</span>" if a and a.group(1) else ""
    return _OUTSIDE_IMG.sub(alt, body)


_LOADING_ATTRS = {"script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",),
                  "source": ("src", "srcset"), "video": ("src", "poster"), "audio": ("src",), "embed": ("src",),
                  "object": ("data",), "track": ("src",), "input": ("src",)}
_REMOTE = re.compile(r"^\s*(?:https?:)?//", re.I)
_CSS_REMOTE = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"]|import\(\s*['"])\s*(?:https?:)?//""", re.I)


def outside_references(page: str) -> list[str]:
    """What a page would load from outside its folder: ``http(s)://`` (or ``//``) sources of script, link,
    img, iframe, … elements, and CSS ``url()`` / ``@import`` / ``import()`` of such addresses."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in _LOADING_ATTRS.get(tag, ()) and value and _REMOTE.search(value):
                    found.append(f"<{tag} {name}={value!r}>")

    Refs(convert_charrefs=True).feed(page)
    found += [page[m.start():m.start() + 80] for m in _CSS_REMOTE.finditer(page)]
    return found


# -- executed copies and their modes ----------------------------------------------------------------

@dataclass
class Page:
    info: NotebookInfo
    executed: Path
    mode: str                   # "default" or "smoke"
    seconds: float | None = None


def _recorded(nb) -> dict:
    return dict(nb.metadata.get("icp_course", {}) or {})


def _pick_copy(src: Path, default_dir: Path | None, smoke_dir: Path, *, timeout: int, log):
    """The executed copy to render and its mode: a fresh default-size copy, else a fresh smoke copy,
    else the notebook executed now in smoke mode (into ``smoke_dir``)."""
    import nbformat

    for folder, assumed in ((default_dir, None), (smoke_dir, "smoke")):
        if folder is None:
            continue
        copy = folder / src.name
        if not copy.exists():
            continue
        if copy.stat().st_mtime < src.stat().st_mtime:
            log(f"  {src.name}: {copy} is older than the notebook, not used")
            continue
        nb = nbformat.read(copy, as_version=4)
        meta = _recorded(nb)
        if meta.get("completed") is False:
            log(f"  {src.name}: {copy} stopped at a failing cell, not used")
            continue
        mode = meta.get("mode") or assumed
        if mode not in ("default", "smoke"):
            log(f"  {src.name}: {copy} does not record its mode (executed before nbrun recorded it), not used")
            continue
        log(f"  {src.name}: reusing {copy} ({mode} mode)")
        return nb, copy, mode, meta.get("seconds")
    log(f"  {src.name}: executing in smoke mode ...")
    t0 = time.perf_counter()
    run = execute_notebook(src, smoke_dir, smoke=True, timeout=timeout)
    log(f"  {src.name}: executed in {time.perf_counter() - t0:.1f} s")
    return nbformat.read(run.executed, as_version=4), run.executed, "smoke", round(run.seconds, 1)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def mode_banner(mode: str, seconds: float | None) -> str:
    took = _duration(seconds)
    if mode == "default":
        return ('<div class="icp-mode default" role="note"><strong>Default sizes.</strong> This page shows the notebook '
                f"executed at its default sizes{f' ({took} of compute)' if took else ''}, the run its text describes.</div>")
    return ('<div class="icp-mode smoke" role="note"><strong>Smoke render.</strong> This page was executed in smoke mode '
            f"(<code>ICP_SMOKE=1</code>: small sizes{f', {took} of compute' if took else ''}), so its numbers, tables and "
            "figures come from a small run and can disagree with what the text (a Summary, a stated result) says about "
            "the default-size run. Run the notebook yourself (<code>make lab</code>), or execute every notebook at "
            "default sizes (<code>make notebooks</code>) and rebuild the site (<code>make site</code>).</div>")


def build_site(out: str | Path = "build/site", *, notebooks: str | Path = "notebooks",
               executed: str | Path = "build/notebooks-smoke", default_copies: str | Path | None = None,
               mathjax: str | Path | None = None, timeout: int = 900, quiet: bool = False) -> Path:
    """Build the site; returns the path of ``index.html``.

    ``default_copies``: default-size executed copies (``make notebooks``), used when fresh;
    ``executed``: smoke-mode copies, used when fresh, else written there; ``mathjax``: the unpacked
    npm package (default :func:`default_mathjax_dir`)."""
    import jinja2
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    out, executed = Path(out), Path(executed)
    default_dir = Path(default_copies) if default_copies is not None else None
    out.mkdir(parents=True, exist_ok=True)
    sources = list_notebooks(notebooks)
    if not sources:
        from icp_influence.errors import ConfigError

        raise ConfigError(f"No notebooks (NN_*.ipynb) in {notebooks}: nothing to put on the site.")
    head = mathjax_head(copy_mathjax(mathjax, out))
    infos = [notebook_info(p) for p in sources]
    exporter = HTMLExporter(template_name="lab", template_file="icp_site.html.j2",
                            extra_loaders=[jinja2.DictLoader({"icp_site.html.j2": SITE_TEMPLATE})])
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags=HIDE_INPUT_TAGS,
                                                         remove_cell_tags={"remove-cell"}), enabled=True)
    pages: list[Page] = []
    for i, (src, info) in enumerate(zip(sources, infos)):
        nb, copy, mode, seconds = _pick_copy(src, default_dir, executed, timeout=timeout, log=log)
        pages.append(Page(info, copy, mode, seconds))
        drop_stderr(nb)
        static_widgets(nb)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": info.title},
                                                             "icp_mathjax_head": head})
        body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(info.title)}</title>", body, count=1, flags=re.S)
        body = body.replace("</head>", f"<style>{STYLE}</style>\n</head>", 1)
        banner = mode_banner(mode, seconds)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + _nav(infos, i, "top") + "\n" + banner, body,
                      count=1)
        body = body.replace("</body>", _nav(infos, i, "bottom") + "\n</body>", 1)
        (out / info.page).write_text(_offline_images(body), encoding="utf-8")
    items = []
    for page in pages:
        info = page.info
        goals = "".join(f"<li>{inline_markdown(g)}</li>" for g in info.goals)
        extra = " · ".join(x for x in (f"Time to work through it: {inline_markdown(info.time)}" if info.time else "",
                                       f"Prerequisites: {inline_markdown(info.prerequisites)}" if info.prerequisites else "") if x)
        took = _duration(page.seconds)
        badge = (f'<span class="mode default" title="executed at default sizes{f" in {took}" if took else ""}">'
                 "default sizes</span>" if page.mode == "default" else
                 f'<span class="mode smoke" title="executed in smoke mode (small sizes){f" in {took}" if took else ""}">'
                 "smoke render</span>")
        items.append(f'<li class="nb" data-mode="{page.mode}"><a href="{info.page}">{html.escape(info.title)}</a>{badge}'
                     f'{f"<div class=time>{extra}</div>" if extra else ""}'
                     f'{f"<div>Learning goals:</div><ul>{goals}</ul>" if goals else ""}</li>')
    n_default = sum(p.mode == "default" for p in pages)
    smoke_note = ("executed in smoke mode (small sizes), so their numbers can disagree with what the text says about the "
                  "default-size run; <code>make notebooks</code>, then <code>make site</code>, renders them at default sizes.")
    if n_default == len(pages):
        modes = "Every page shows its notebook executed at default sizes, the runs the text describes."
    elif n_default == 0:
        modes = f"Every page is a <em>smoke render</em>: its notebook was {smoke_note.replace('their', 'its', 1)}"
    else:
        modes = (f"{n_default} of {len(pages)} pages show their notebook executed at default sizes; those marked "
                 f"<em>smoke render</em> were {smoke_note}")
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>icp-influence · the course</title><style>{STYLE}</style>
{head}
</head>
<body class="icp-index">
<h1>In-context probing vs gradient influence</h1>
<p class="sub">Does prompting an LLM with a training example value that example the way gradient-based influence does?
Run the notebooks yourself with <code>make lab</code>. {modes} The times are for working through a notebook yourself.</p>
<ol>
{chr(10).join(items)}
</ol>
<p class="sub">Built {time.strftime("%Y-%m-%d %H:%M")} from {len(infos)} notebooks.</p>
</body></html>
"""
    index_path = out / "index.html"
    index_path.write_text(index, encoding="utf-8")
    summary = ", ".join(f"{p.info.path.stem[:2]} {p.mode}" for p in pages)
    log(f"site: {index_path} ({len(infos)} notebooks: {summary})")
    return index_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/site")
    ap.add_argument("--notebooks", default="notebooks")
    ap.add_argument("--default-copies", default="build/notebooks",
                    help="default-size executed copies (make notebooks), used when newer than the source")
    ap.add_argument("--executed", default="build/notebooks-smoke",
                    help="smoke-mode executed copies to reuse when newer than the source (executed there otherwise)")
    ap.add_argument("--mathjax", default=None,
                    help=f"the unpacked npm package mathjax@{MATHJAX_VERSION} (default: <venv>/share/icp-course/"
                         f"mathjax-{MATHJAX_VERSION}, made by `make mathjax`)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell when executing")
    args = ap.parse_args(argv)
    build_site(args.out, notebooks=args.notebooks, executed=args.executed, default_copies=args.default_copies,
               mathjax=args.mathjax, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
