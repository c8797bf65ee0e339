"""Course kit: the Colab badge and install cell, the instructor-notes table, and the
self-checking exercise registry of the notebooks not yet converted to nbgrader."""
from __future__ import annotations

import ast
import shutil
import sys
import types
from pathlib import Path

import nbformat

from icp_course.colab import COLAB_SOURCE, REPO_URL, add_colab_to_folder
from icp_course.instructor_notes import NOTES_END, NOTES_START, executed_seconds, update_notes
from icp_course.nbrun import list_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = list_notebooks(ROOT / "notebooks")


# -- Colab ---------------------------------------------------------------------------------
def test_colab_badge_and_install_cell_are_idempotent_and_inert_outside_colab(tmp_path, monkeypatch):
    for p in NOTEBOOKS:
        shutil.copy(p, tmp_path / p.name)
    changed = add_colab_to_folder(tmp_path)  # the committed notebooks may carry it already
    assert {p.name for p in changed} <= {p.name for p in NOTEBOOKS}
    snapshot = {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")}
    assert add_colab_to_folder(tmp_path) == []  # idempotent
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")} == snapshot
    from tests.test_notebook_rules import test_notebook_rules

    slug = REPO_URL.split("github.com/")[1]
    for path in list_notebooks(tmp_path):
        nb = nbformat.read(path, as_version=4)
        first, install = nb.cells[0], nb.cells[1]
        url = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
        assert first.cell_type == "markdown" and first.source.startswith("# ") and f"]({url})" in first.source
        assert install.cell_type == "code" and install.source == COLAB_SOURCE
        assert sum(c.source == COLAB_SOURCE for c in nb.cells) == 1
        test_notebook_rules(path)  # the house rules still hold
    calls = []
    fake_ipython = types.SimpleNamespace(run_line_magic=lambda *a: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(COLAB_SOURCE, {"get_ipython": lambda: fake_ipython})
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(COLAB_SOURCE, {"get_ipython": lambda: fake_ipython})
    assert calls[0][0] == "pip" and f"git+{REPO_URL}" in calls[0][1] and len(calls) == 2


# -- instructor notes -----------------------------------------------------------------------
def test_instructor_notes_table_lists_every_notebook_with_measured_times(tmp_path):
    smoke = tmp_path / "smoke"
    smoke.mkdir()
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[0].metadata["execution"] = {"iopub.execute_input": "2026-01-01T10:00:00.0Z", "shell.execute_reply": "2026-01-01T10:00:01Z"}
    code[-1].metadata["execution"] = {"iopub.execute_input": "2026-01-01T10:00:30Z", "shell.execute_reply": "2026-01-01T10:00:42.5Z"}
    nbformat.write(nb, smoke / NOTEBOOKS[0].name)
    assert executed_seconds(smoke / NOTEBOOKS[0].name) == 42.5
    notes = tmp_path / "notes.md"
    notes.write_text(f"intro\n{NOTES_START}\nold table\n{NOTES_END}\nend\n")
    assert update_notes(notes, notebooks=ROOT / "notebooks", smoke_dir=smoke, default_dir=tmp_path / "none")
    text = notes.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{NOTES_END}\nend\n") and "old table" not in text
    assert all(f"(`{p.name}`)" in text for p in NOTEBOOKS)
    row = next(line for line in text.splitlines() if f"(`{NOTEBOOKS[0].name}`)" in line)
    assert row.endswith("| 42 s | — |")
    # a later refresh without the executed copies keeps the last measurement
    assert not update_notes(notes, notebooks=ROOT / "notebooks", smoke_dir=tmp_path / "gone", default_dir=tmp_path / "none")


def test_committed_instructor_notes_list_every_notebook():
    text = (ROOT / "docs" / "instructor_notes.md").read_text(encoding="utf-8")
    assert NOTES_START in text and NOTES_END in text
    missing = [p.name for p in NOTEBOOKS if f"(`{p.name}`)" not in text]
    assert not missing, f"docs/instructor_notes.md lacks {missing}: run `make notes`"


# -- the check() registry of the notebooks not yet converted to nbgrader ----------------------
def _check_names(path: Path) -> list[str]:
    names = []
    for c in nbformat.read(path, as_version=4).cells:
        if c.cell_type != "code" or "check(" not in c.source:
            continue
        for node in ast.walk(ast.parse(c.source)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "check"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.append(node.args[0].value)
    return names


def test_no_notebook_uses_the_old_check_exercises():
    """Every exercise is an nbgrader exercise now (tests/test_assignments.py): no ``check(...)`` call is left."""
    used = {p.name: _check_names(p) for p in NOTEBOOKS}
    assert not any(used.values()), used
