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
