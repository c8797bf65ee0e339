"""The shape of the project: the science package stands alone, the design document lives here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_science_package_imports_without_course_tooling():
    """`import icp_influence` and every public valuator pull in no Jupyter, widgets or plotting."""
    code = ("import sys, icp_influence, icp_influence.valuators as V\n"
            "from icp_influence import stats, compare, selection, finetune, instructions, experiments\n"
            "for n in V.names(): V.get(n)\n"
            "bad = [m for m in ('ipywidgets', 'jupyterlab', 'matplotlib', 'seaborn', 'pandas', 'icp_course') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_science_modules_never_import_the_course_package():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "lib" / "icp_influence").rglob("*.py")
                 if "icp_course" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def test_nothing_cites_files_outside_the_repository():
    texts = [p for p in [*ROOT.joinpath("lib").rglob("*.py"), *ROOT.joinpath("notebooks").glob("*.ipynb"),
                         ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md")]]
    offenders = [str(p.relative_to(ROOT)) for p in texts if "DESIGN.md" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders
    assert (ROOT / "docs" / "design.md").exists()


def test_readme_layout_picture_matches_the_folders():
    """Every folder and module the README's layout picture names exists."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- layout:begin -->"):readme.index("<!-- layout:end -->")]
    names = re.findall(r"([\w./-]+/|[\w-]+\.(?:py|md|toml|yml|txt))", block)
    assert len(names) >= 10
    missing = [n for n in names if not any(ROOT.rglob(n.rstrip("/")))]
    assert not missing, missing


def _import_graph(package: Path, *, function_level: bool) -> dict[str, set[str]]:
    """Module → the package's modules it imports (relative and absolute), read with ``ast``."""
    import ast

    mods = {}
    for p in package.rglob("*.py"):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        nodes = ast.walk(tree) if function_level else [n for top in tree.body for n in ast.walk(top)
                                                       if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
        here = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for n in nodes:
            targets = []
            if isinstance(n, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - (n.level - 1)] if n.level else []
                tgt = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
                targets = [f"{tgt}.{a.name}" if f"{tgt}.{a.name}" in mods else tgt for a in n.names]
            elif isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            for t in targets:
                # a package's own __init__ and its submodules are one unit here (re-exports, not cycles)
                if t in mods and t != m and not t.startswith(m + ".") and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_science_package_has_no_import_cycles_even_through_lazy_imports():
    graph = _import_graph(ROOT / "lib" / "icp_influence", function_level=True)
    assert len(graph) > 50 and graph["icp_influence.pools"] >= {"icp_influence.data", "icp_influence.instructions"}
    assert _cycles(graph) == []
