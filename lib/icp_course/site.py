"""A static HTML site of the executed notebooks (smoke mode), with navigation.

``python -m icp_course.site --out build/site [--executed build/notebooks-smoke]``

Each notebook is rendered with nbconvert (lab template) from its executed copy in
``--executed`` when that copy is newer than the source; otherwise it is executed first
(``icp_course.nbrun.execute_notebook``, smoke mode). ``index.html`` lists every
notebook with its title, learning goals and time estimate; every page has
previous / index / next links. Used by ``make site``.
"""
from __future__ import annotations

import argparse
import html
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from icp_course.nbrun import execute_notebook, list_notebooks

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
    """Tiny Markdown-to-HTML for one line: escapes, then links, code, bold and italics."""
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


def _executed_copy(src: Path, executed_dir: Path, *, timeout: int, log) -> Path:
    executed = executed_dir / src.name
    if executed.exists() and executed.stat().st_mtime >= src.stat().st_mtime:
        log(f"  {src.name}: reusing {executed}")
        return executed
    log(f"  {src.name}: executing in smoke mode ...")
    t0 = time.perf_counter()
    run = execute_notebook(src, executed_dir, smoke=True, timeout=timeout)
    log(f"  {src.name}: executed in {time.perf_counter() - t0:.1f} s")
    return run.executed


def build_site(out: str | Path = "build/site", *, notebooks: str | Path = "notebooks",
               executed: str | Path = "build/notebooks-smoke", timeout: int = 900, quiet: bool = False) -> Path:
    """Build the site; returns the path of ``index.html``."""
    import nbformat
    from nbconvert import HTMLExporter

    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    out, executed = Path(out), Path(executed)
    out.mkdir(parents=True, exist_ok=True)
    sources = list_notebooks(notebooks)
    if not sources:
        from icp_influence.errors import ConfigError

        raise ConfigError(f"No notebooks (NN_*.ipynb) in {notebooks}: nothing to put on the site.")
    infos = [notebook_info(p) for p in sources]
    exporter = HTMLExporter(template_name="lab")
    for i, (src, info) in enumerate(zip(sources, infos)):
        nb = nbformat.read(_executed_copy(src, executed, timeout=timeout, log=log), as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": info.title}})
        body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(info.title)}</title>", body, count=1, flags=re.S)
        body = body.replace("</head>", f"<style>{STYLE}</style>\n</head>", 1)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + _nav(infos, i, "top"), body, count=1)
        body = body.replace("</body>", _nav(infos, i, "bottom") + "\n</body>", 1)
        (out / info.page).write_text(body, encoding="utf-8")
    items = []
    for info in infos:
        goals = "".join(f"<li>{inline_markdown(g)}</li>" for g in info.goals)
        extra = " · ".join(x for x in (f"Time: {inline_markdown(info.time)}" if info.time else "",
                                       f"Prerequisites: {inline_markdown(info.prerequisites)}" if info.prerequisites else "") if x)
        items.append(f'<li class="nb"><a href="{info.page}">{html.escape(info.title)}</a>'
                     f'{f"<div class=time>{extra}</div>" if extra else ""}'
                     f'{f"<div>Learning goals:</div><ul>{goals}</ul>" if goals else ""}</li>')
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>icp-influence · the course</title><style>{STYLE}</style></head>
<body class="icp-index">
<h1>In-context probing vs gradient influence</h1>
<p class="sub">Does prompting an LLM with a training example value that example the way gradient-based influence does?
The notebooks below were executed in smoke mode (small sizes); run them yourself with <code>make lab</code>.</p>
<ol>
{chr(10).join(items)}
</ol>
<p class="sub">Built {time.strftime("%Y-%m-%d %H:%M")} from {len(infos)} notebooks.</p>
</body></html>
"""
    index_path = out / "index.html"
    index_path.write_text(index, encoding="utf-8")
    log(f"site: {index_path} ({len(infos)} notebooks)")
    return index_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/site")
    ap.add_argument("--notebooks", default="notebooks")
    ap.add_argument("--executed", default="build/notebooks-smoke",
                    help="executed copies to reuse when newer than the source (executed there otherwise)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell when executing")
    args = ap.parse_args(argv)
    build_site(args.out, notebooks=args.notebooks, executed=args.executed, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
