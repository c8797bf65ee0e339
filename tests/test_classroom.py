"""Classroom kit: student copies (and their staleness check), self-checking exercises, Colab cells."""
from __future__ import annotations

import ast
import inspect
import re
import shutil
import sys
import types
from pathlib import Path
from unittest.mock import MagicMock

import nbformat
import pytest

from icp_course import classroom, exercises
from icp_course.classroom import (COLAB_SOURCE, REPO_URL, SOLUTION_TAG, add_colab_to_folder, stale_student,
                                     student_source, write_student)
from icp_course.nbrun import list_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = list_notebooks(ROOT / "notebooks")


def _solution_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and SOLUTION_TAG in c.metadata.get("tags", [])]


# -- the committed student copies ---------------------------------------------------------
def test_student_copies_are_up_to_date():
    problems = stale_student(ROOT / "notebooks", ROOT / "notebooks" / "student")
    assert not problems, "\n".join(problems) + "\nRegenerate them: `make student` (then commit notebooks/student/)."


@pytest.fixture
def course_copy(tmp_path):
    """The top-level notebooks copied to tmp, with freshly generated student copies."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for p in NOTEBOOKS:
        shutil.copy(p, nbdir / p.name)
    write_student(nbdir)
    assert stale_student(nbdir) == []
    return nbdir


def test_staleness_check_detects_a_changed_solution_cell(course_copy):
    path = course_copy / "00_start_here.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = _solution_cells(nb)[0]
    cell.source = "helper = 1\n" + cell.source  # the solution changes; the student copy is not regenerated
    nbformat.write(nb, path)
    problems = stale_student(course_copy)
    assert len(problems) == 1 and problems[0].startswith("00_start_here.ipynb: student copy is stale (cell ")
    assert classroom.main(["student", "--notebooks", str(course_copy), "--check"]) == 1
    write_student(course_copy)  # `make student`
    assert stale_student(course_copy) == []
    assert classroom.main(["student", "--notebooks", str(course_copy), "--check"]) == 0


def test_staleness_check_detects_new_and_deleted_notebooks(course_copy):
    shutil.copy(course_copy / "00_start_here.ipynb", course_copy / "99_new.ipynb")
    (course_copy / "student" / "00_start_here.ipynb").rename(course_copy / "student" / "98_gone.ipynb")
    problems = stale_student(course_copy)
    assert any(p.startswith("99_new.ipynb: no student copy") for p in problems)
    assert any(p.startswith("00_start_here.ipynb: no student copy") for p in problems)
    assert any(p.startswith("98_gone.ipynb: student copy of a notebook that no longer exists") for p in problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_copy_has_no_outputs_and_no_solution_code(path):
    nb = nbformat.read(path, as_version=4)
    st = classroom.student_notebook(nb, path.name)
    assert len(st.cells) == len(nb.cells)
    code = [c for c in st.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    sols = _solution_cells(st)
    assert sols, f"{path.name} has exercise cells tagged 'solution'"
    for cell in sols:
        tree = ast.parse(cell.source)
        context = {k.value.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and getattr(node.func, "id", None) == "check" for k in node.keywords if isinstance(k.value, ast.Name)}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                names = {n.id for n in ast.walk(stmt.targets[0]) if isinstance(n, ast.Name)}
                if not names <= context:  # only the exercise's data (check context) keeps its value
                    assert isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis, cell.source
            else:
                assert isinstance(stmt, (ast.Expr, ast.Import, ast.ImportFrom, ast.FunctionDef)), cell.source
        assert "check(" in cell.source
    # non-solution cells are unchanged
    for a, b in zip(nb.cells, st.cells):
        if a.cell_type == "code" and SOLUTION_TAG not in a.metadata.get("tags", []):
            assert a.source == b.source


class _AnyName(dict):
    """Namespace in which every undefined name is a placeholder (the notebook's earlier cells)."""

    def __missing__(self, key):
        import builtins

        if hasattr(builtins, key):
            raise KeyError(key)
        return MagicMock(name=key)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_unsolved_student_exercises_raise_their_hint(path):
    """Each student exercise cell hands `...` to check(), and check(name, ...) raises with the hint."""
    st = classroom.student_notebook(nbformat.read(path, as_version=4), path.name)
    calls = []

    def fake_check(name, answer=None, **context):
        calls.append((name, answer))

    for cell in _solution_cells(st):
        before = len(calls)
        exec(compile(cell.source, path.name, "exec"), {"__builtins__": __builtins__}, _AnyName(check=fake_check))
        assert len(calls) > before, cell.source
    assert calls
    for name, answer in calls:
        assert answer is Ellipsis, f"{name}: the student copy still passes a computed answer"
        with pytest.raises(AssertionError, match=re.escape(exercises.get(name).hint)):
            exercises.check(name, answer)


# -- the cell transformation ---------------------------------------------------------------
def test_student_source_keeps_the_check_and_blanks_assignments():
    src = ('# count them\nimport numpy as np\nvals = np.arange(5)\na, (b, *rest) = 1, (2, 3, 4)\n'
           'total = 0\nfor v in vals:\n    total += v\nd = {}\nd["x"] = 1\nscore: float = 2.0\n'
           'def helper(x):\n    """Doubles."""\n    return 2 * x\n'
           'check("nb.total", total, data=vals)')
    assert student_source(src) == (
        "# count them\n# Your solution: replace each `...` with your code.\nimport numpy as np\nvals = np.arange(5)\n"
        "a = ...\nb = ...\nrest = ...\ntotal = ...\nd = ...\nscore = ...\n"
        "def helper(x):\n    \"\"\"Doubles.\"\"\"\n    ...\ncheck(\"nb.total\", total, data=vals)")


def test_student_source_keeps_exercise_data_but_not_what_depends_on_the_solution():
    src = "data = load(3)\nfit = solve(data)\nresid = data - fit\nans = resid.sum()\ncheck('nb.a', ans, data=data, resid=resid)"
    assert student_source(src) == ("# Your solution: replace each `...` with your code.\ndata = load(3)\nfit = ...\n"
                                   "resid = ...\nans = ...\ncheck('nb.a', ans, data=data, resid=resid)")


def test_student_source_names_an_inline_answer_and_loop_variables():
    assert student_source('check("nb.x", float(np.sum(z)), z=z)') == (
        "# Your solution: replace each `...` with your code.\nanswer = ...\ncheck('nb.x', answer, z=z)")
    src = 'for i in range(3):\n    best = i\ncheck("nb.best", best)'
    assert student_source(src) == "# Your solution: replace each `...` with your code.\nbest = ...\ncheck(\"nb.best\", best)"
    src = "%matplotlib inline\nresult = 6 * 7\ncheck('nb.r', result)"  # IPython magics are understood
    assert student_source(src).endswith("result = ...\ncheck('nb.r', result)")


def test_student_exercise_cell_fails_with_the_hint_until_solved():
    """End to end on a registered exercise: the unsolved student cell raises the hint; the solution passes."""
    name = "00.icp_win"
    hint = exercises.get(name).hint
    solution_cell = 'win = int(ll_with_demo > ll_zero_shot)\ncheck("00.icp_win", win, ll_with_demo=ll_with_demo, ll_zero_shot=ll_zero_shot)'
    ns = {"check": exercises.check, "ll_with_demo": -1.0, "ll_zero_shot": -2.5}
    exec(solution_cell, dict(ns))
    with pytest.raises(AssertionError, match=re.escape(hint)):
        exec(student_source(solution_cell), dict(ns))
    with pytest.raises(AssertionError, match="not quite"):
        exec(solution_cell.replace("int(ll_with_demo > ll_zero_shot)", "0"), dict(ns))


# -- exercises: solutions live in the library -------------------------------------------------
def _check_names(path: Path) -> list[str]:
    return [n for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
            for n in classroom.check_names(c.source)]


def test_every_notebook_check_is_a_registered_exercise_and_every_exercise_is_used():
    used = {n: p.name for p in NOTEBOOKS for n in _check_names(p)}
    registered = set(exercises.names())
    assert not set(used) - registered, f"unregistered exercises in notebooks: {sorted(set(used) - registered)}"
    prefixes = {p.name[:2] for p in NOTEBOOKS}
    orphans = sorted(n for n in registered - set(used) if n.split(".")[0] in prefixes)
    assert not orphans, f"registered exercises that their notebook never checks: {orphans}"


def test_reference_solutions_pass_their_own_check(capsys):
    """Exercises without notebook data are checked here; the others get their data from the notebook,
    whose solution cell calls check() under a real kernel in tests/test_notebooks.py, so they must be used there."""
    used = {n for p in NOTEBOOKS for n in _check_names(p)}
    prefixes = {p.name[:2] for p in NOTEBOOKS}
    ran, by_notebook = [], []
    for name in exercises.names():
        ex = exercises.get(name)
        assert ex.hint, f"{name} has a hint"
        params = inspect.signature(ex.solution_fn).parameters.values()
        required = [p.name for p in params if p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if required:
            if name.split(".")[0] in prefixes:
                assert name in used, f"{name} needs notebook data ({required}) but no notebook checks it"
            by_notebook.append(name)
            continue
        assert exercises.check(name, exercises.solution(name)) is True
        assert f"✓ {name}" in capsys.readouterr().out
        ran.append(name)
    assert ran or by_notebook


def test_grade_reports_each_exercise(tmp_path):
    """`classroom grade`: one solved and one unsolved exercise in a student notebook."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    solved = nbformat.v4.new_code_cell('from icp_course.exercises import check\n'
                                       'win = int(-1.0 > -2.5)\ncheck("00.icp_win", win, ll_with_demo=-1.0, ll_zero_shot=-2.5)')
    unsolved = nbformat.v4.new_code_cell(student_source('ll_p = 1.0\ncheck("00.sum_of_tokens", ll_p, comparison=c)'))
    nb.cells = [nbformat.v4.new_code_cell("c = {'ll_zero_shot': -3.0}"), solved, unsolved]
    path = tmp_path / "00_x.ipynb"
    nbformat.write(nb, path)
    rows = classroom.grade(path)
    assert [(r["exercise"], r["ok"]) for r in rows] == [("00.icp_win", True), ("00.sum_of_tokens", False)]
    assert rows[1]["message"].startswith("AssertionError: 00.sum_of_tokens: no answer yet")
    assert exercises.get("00.sum_of_tokens").hint in rows[1]["message"]


# -- Colab ---------------------------------------------------------------------------------
def test_colab_badge_and_install_cell_are_idempotent_and_inert_outside_colab(course_copy, monkeypatch):
    changed = add_colab_to_folder(course_copy)  # the committed notebooks may carry it already
    assert {p.name for p in changed} <= {p.name for p in NOTEBOOKS}
    snapshot = {p.name: p.read_bytes() for p in course_copy.glob("*.ipynb")}
    assert add_colab_to_folder(course_copy) == []  # idempotent
    assert {p.name: p.read_bytes() for p in course_copy.glob("*.ipynb")} == snapshot
    from tests.test_notebook_rules import test_notebook_rules

    slug = REPO_URL.split("github.com/")[1]
    for path in list_notebooks(course_copy):
        nb = nbformat.read(path, as_version=4)
        first, install = nb.cells[0], nb.cells[1]
        url = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
        assert first.cell_type == "markdown" and first.source.startswith("# ") and f"]({url})" in first.source
        assert install.cell_type == "code" and install.source == COLAB_SOURCE
        assert sum(c.source == COLAB_SOURCE for c in nb.cells) == 1
        test_notebook_rules(path)  # the house rules still hold
    # the cell installs only inside Colab
    calls = []
    fake_ipython = types.SimpleNamespace(run_line_magic=lambda *a: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(COLAB_SOURCE, {"get_ipython": lambda: fake_ipython})
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(COLAB_SOURCE, {"get_ipython": lambda: fake_ipython})
    assert calls[0][0] == "pip" and f"git+{REPO_URL}" in calls[0][1] and len(calls) == 2
    # the student copy's badge opens the student notebook
    write_student(course_copy)
    st = nbformat.read(course_copy / "student" / "00_start_here.ipynb", as_version=4)
    assert f"blob/main/notebooks/student/00_start_here.ipynb" in st.cells[0].source


# -- instructor notes -----------------------------------------------------------------------
def test_instructor_notes_table_lists_every_notebook_with_measured_times(tmp_path):
    from icp_course.classroom import NOTES_END, NOTES_START, executed_seconds, update_notes

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
    missing = [p.name for p in NOTEBOOKS if f"(`{p.name}`)" not in text]
    assert not missing, f"docs/instructor_notes.md lacks {missing}: run `make student` (it refreshes the table)"
