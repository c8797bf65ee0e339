"""nbgrader exercises: the rules every graded notebook follows, the course directory built by
code, and (marked `notebooks`, a few minutes) the full round trip — release, a solved copy
autograded to full marks, a wrong answer (in 01, and in 02) losing exactly its exercise's points.

The round trip autogrades notebooks 01 and 02 only (the nbgrader machinery is the same for every
notebook). What that gives up for 00 and 03–07: running the *released* copy inside the nbgrader
course directory (its working directory, the hidden tests restored from the gradebook, locked
cells and points). What still covers them: every notebook's solutions pass its hidden tests in the
smoke execution of the instructor's copy (``tests/test_notebooks.py``, where hidden tests are
ordinary code), every release is checked here for cleared solutions, no hidden tests and its
exercise count, and its solved copy for the same solution cells (grade ids) as the source."""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from icp_course import assignments as A
from icp_course.colab import BADGE_RE

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
GRADED = A.graded_notebooks(NOTEBOOKS)
CONVERTED = ("00", "01", "02", "03", "04", "05", "06", "07")
ALICE = ("01_",)   # alice hands in 01 solved (every solution of 02 passes its hidden tests in the smoke run of the
                   # instructor's notebook, and bob's 02 is graded through nbgrader below)


def _read(p):
    return nbformat.read(p, as_version=4)


# ------------------------------------------------------------------ the notebooks' exercises
def test_converted_notebooks_have_nbgrader_exercises():
    names = {p.name[:2]: p for p in GRADED}
    assert set(CONVERTED) <= set(names), f"graded notebooks: {sorted(names)}"
    counts = {k: len(A.exercises_of(_read(names[k]))) for k in CONVERTED}
    assert all(n >= 1 for n in counts.values()), counts
    assert sum(counts.values()) >= 16, counts
    ids = [e.grade_id for p in GRADED for e in A.exercises_of(_read(p))]
    assert len(ids) == len(set(ids)), "grade_ids are unique across the course"


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.name)
def test_graded_notebook_follows_the_nbgrader_rules(path):
    nb = _read(path)
    prefix = path.name[:2] + "-"
    seen_solution = None
    ids = []
    for i, cell in enumerate(nb.cells):
        meta = A.nbgrader_meta(cell)
        if not meta:
            assert "### BEGIN SOLUTION" not in cell.source and "BEGIN HIDDEN TESTS" not in cell.source, \
                f"cell {i}: nbgrader markers in a cell without nbgrader metadata"
            continue
        assert meta["schema_version"] == 3 and meta["grade_id"].startswith(prefix), meta
        ids.append(meta["grade_id"])
        assert cell.cell_type == "code", f"cell {i}: exercises are code cells"
        if meta["solution"]:
            assert not meta["grade"] and not meta["locked"], meta
            assert cell.source.count("### BEGIN SOLUTION") == 1 and cell.source.count("### END SOLUTION") == 1
            assert cell.source.index("### BEGIN SOLUTION") < cell.source.index("### END SOLUTION")
            prev = next(c for c in reversed(nb.cells[:i]) if c.cell_type == "markdown")
            assert prev.source.strip(), f"cell {i}: a Markdown statement comes before the solution cell"
            seen_solution = meta["grade_id"]
        if meta["grade"]:
            assert meta["locked"] and meta["points"] > 0 and not meta["solution"], meta
            assert seen_solution, f"cell {i}: a test cell follows its solution cell"
            src = cell.source
            assert src.count("### BEGIN HIDDEN TESTS") == 1 and src.count("### END HIDDEN TESTS") == 1, \
                f"{meta['grade_id']}: visible and hidden tests"
            visible, hidden = src.split("### BEGIN HIDDEN TESTS")
            hidden, after = hidden.split("### END HIDDEN TESTS")
            assert re.search(r"\bexpect\w*\(|\bassert\b", visible), f"{meta['grade_id']}: visible tests"
            assert re.search(r"\bexpect\w*\(|\bassert\b", hidden), f"{meta['grade_id']}: hidden tests"
            assert re.search(r'print\(f?"✓', after), f"{meta['grade_id']}: ends with a clear printed result"
            assert "check(" not in src
            seen_solution = None
    assert len(ids) == len(set(ids))
    assert seen_solution is None, "every solution cell has its test cell"


def test_exercise_cells_print_results_and_echo_nothing():
    """No stray `True`: the last line of a solution or test cell is never a bare expression."""
    import ast

    for path in GRADED:
        for cell in _read(path).cells:
            if A.nbgrader_meta(cell):
                last = ast.parse(cell.source).body[-1]
                assert not isinstance(last, ast.Expr) or (isinstance(last.value, ast.Call)
                                                         and getattr(last.value.func, "id", "") == "print"), \
                    f"{path.name}: {cell.source[-120:]}"


# ------------------------------------------------------------------ the course directory
def test_source_notebook_replaces_the_badge_and_drops_instructor_lines():
    nb = nbformat.v4.new_notebook()
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://x/y.ipynb)"
    nb.cells = [nbformat.v4.new_markdown_cell(f"# T\n\n{badge}\n\nGoals\n\nStudents: use your copy. {A.INSTRUCTOR_ONLY}\nmore"),
                nbformat.v4.new_code_cell("1 + 1")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="2")]
    nb.cells[1].execution_count = 3
    src = A.source_notebook(nb, "00_x.ipynb")
    first = src.cells[0].source
    assert first.startswith("# T\n") and not BADGE_RE.search(first) and "Your copy" in first and "notebooks/00_x.ipynb" in first
    assert "Students: use your copy" not in first and first.rstrip().endswith("more")
    assert src.cells[1].outputs == [] and src.cells[1].execution_count is None
    assert nb.cells[1].outputs, "the input is not modified"


def test_write_course_lays_out_nbgrader_source(tmp_path):
    names = A.write_course(NOTEBOOKS, tmp_path / "course")
    assert names == [p.stem for p in GRADED]
    config = (tmp_path / "course" / "nbgrader_config.py").read_text()
    assert f"c.CourseDirectory.root = {str((tmp_path / 'course').resolve())!r}" in config
    assert "c.Execute.timeout" in config and "c.ClearSolutions.enforce_metadata = True" in config
    assert "c.Execute.startup_timeout" in config   # a slow kernel start on a busy machine is not a failed notebook
    for p in GRADED:
        src = _read(tmp_path / "course" / "source" / p.stem / p.name)
        assert len(src.cells) == len(_read(p).cells)
        assert A.exercises_of(src) == A.exercises_of(_read(p))
    # exec the config the way nbgrader does (a traitlets Config)
    from traitlets.config import Config

    c = Config()
    exec(compile(config, "nbgrader_config.py", "exec"), {"get_config": lambda: c})
    assert c.Execute.allow_errors is True and c.CourseDirectory.course_id == A.COURSE_ID
    # autograding executes with the re-polling kernel client (a loaded machine can otherwise hang a cell)
    names = [p.__name__ for p in c.Autograde.autograde_preprocessors]
    assert names[0] == "SlicedPollExecute" and "SaveAutoGrades" in names and "Execute" not in names


def test_solved_copy_fills_every_solution_cell():
    nb = nbformat.v4.new_notebook()
    sol = nbformat.v4.new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION")
    sol.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False, "grade_id": "99-f", "schema_version": 3}
    nb.cells = [sol]
    release = copy.deepcopy(nb)
    release.cells[0].source = "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert A.solved_copy(release, nb).cells[0].source == sol.source
    assert A.solved_copy(release, nb, {"99-f": "def f(x):\n    return x"}).cells[0].source == "def f(x):\n    return x"


def test_collect_submissions_reads_nbgraders_layout(tmp_path):
    for rel in ("submitted/alice/00_a/00_a.ipynb", "submitted/bob/00_a/00_a.ipynb", "submitted/bob/01_b/01_b.ipynb",
                "submitted/carol/01_b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    expected = {"alice": ["00_a"], "bob": ["00_a", "01_b"]}
    assert A.collect_submissions(tmp_path) == expected                   # a folder holding submitted/
    assert A.collect_submissions(tmp_path / "submitted") == expected     # or submitted/ itself
    with pytest.raises(FileNotFoundError):
        A.collect_submissions(tmp_path / "nope")


def test_score_table_has_a_row_per_exercise_and_a_column_per_student():
    S = A.Score
    rows = [S("alice", "00_a", "00_a", "00-x-tests", 2.0, 2.0), S("alice", "00_a", "00_a", "00-y-tests", 3.0, 3.0),
            S("bob", "00_a", "00_a", "00-x-tests", 0.0, 2.0), S("bob", "00_a", "00_a", "00-y-tests", None, 3.0),
            S("alice", "01_b", "01_b", "01-z-tests", 1.0, 1.0)]
    table = A.score_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["exercise", "alice", "bob"]
    assert lines[2].split() == ["00_a/00-x-tests", "2/2", "0/2"]
    assert lines[3].split() == ["00_a/00-y-tests", "3/3", "not", "graded"]
    assert lines[4].split() == ["01_b/01-z-tests", "1/1", "—"]      # bob did not hand in 01_b
    assert lines[-1].split() == ["total", "6/6", "0/5"]


def test_checks_give_clear_messages():
    import numpy as np

    from icp_course.checks import expect, expect_answered, expect_close, expect_equal, expect_reason

    assert expect_close([1.0, 2.0], np.array([1.0, 2.0]), what="x") is None
    with pytest.raises(AssertionError, match=r"x: expected shape \(3,\), got shape \(2,\)\nHint: h"):
        expect_close([1.0, 2.0], [1, 2, 3], what="x", hint="h")
    with pytest.raises(AssertionError, match=r"largest \|difference\| 0.5"):
        expect_close([1.0, 2.5], [1.0, 2.0], what="x")
    with pytest.raises(AssertionError, match="no answer yet"):
        expect_close(None, [1.0], what="x")
    with pytest.raises(AssertionError, match="NaN"):
        expect_close([float("nan")], [1.0], what="x")
    with pytest.raises(AssertionError, match="expected 3, got 4"):
        expect_equal(4, 3, what="n")
    expect_equal([1, 2], (1, 2), what="ids")
    with pytest.raises(AssertionError, match="at least 4 words"):
        expect_reason("because")
    expect_reason("only answer tokens are scored")
    with pytest.raises(AssertionError, match="no answer yet"):
        expect_answered("  ", what="p")
    with pytest.raises(AssertionError, match="went wrong"):
        expect(False, what="w", detail="went wrong")
    import torch

    expect_close(torch.ones(2, dtype=torch.float64), [1, 1], what="tensor")


# ------------------------------------------------------------------ the round trip (slow)
WRONG_GD_STEP = '''def gd_step(xs, ys, W0, lr):
    """W1 = W0 − lr ∇L(W0) — wrong: assumes W0 = 0 (passes the visible test, fails the hidden one)."""
    N = xs.shape[1]
    return lr / N * torch.einsum("tn,tnd->td", ys, xs)
'''

WRONG_FIRST_ORDER = '''def first_order(x_z, y_z, x_p, y_p, s, W=None):
    """s·⟨∇ℓ(p), ∇ℓ(z)⟩ — wrong: ignores W (passes the visible test at W₀ = 0, fails the hidden ones at W ≠ 0)."""
    return float(s * float(y_z) * float(y_p) * (x_z @ x_p))
'''


@pytest.mark.notebooks
def test_release_then_autograde_full_marks_and_wrong_answers_lose_only_their_points(tmp_path, capsys):
    course, release_dir, subs = tmp_path / "course", tmp_path / "release", tmp_path / "submissions"
    released = A.release(NOTEBOOKS, course_dir=course, out=release_dir)
    assert [p.parent.name for p in released] == [p.stem for p in GRADED]
    assert (release_dir / "README.md").exists()
    for rel, src_path in zip(released, GRADED):
        text = rel.read_text(encoding="utf-8")
        nb = _read(rel)
        assert "### BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        assert "raise NotImplementedError()" in text
        assert len(A.exercises_of(nb)) == len(A.exercises_of(_read(src_path)))
        assert not BADGE_RE.search(nb.cells[0].source) and "Your copy" in nb.cells[0].source
        assert A.INSTRUCTOR_ONLY not in text and "is the instructor's version" not in text
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        # every solution was cleared: no solution cell of the release keeps its solution's body
        for cell in nb.cells:
            if A.is_solution(cell):
                assert "# YOUR CODE HERE" in cell.source
        # the solved copy of every notebook fills the same solution cells (grade ids) as the source; alice hands in 01
        src_nb = _read(src_path)
        solved = A.solved_copy(nb, src_nb)
        ours = {A.nbgrader_meta(c)["grade_id"]: c.source for c in src_nb.cells if A.is_solution(c)}
        assert {A.nbgrader_meta(c)["grade_id"]: c.source for c in solved.cells if A.is_solution(c)} == ours
        if rel.name[:3] in ALICE:
            (subs / "alice" / rel.parent.name).mkdir(parents=True)
            nbformat.write(solved, subs / "alice" / rel.parent.name / rel.name)
    nb01 = next(p for p in released if p.name.startswith("01_"))
    src01 = next(p for p in GRADED if p.name.startswith("01_"))
    nb02 = next(p for p in released if p.name.startswith("02_"))
    src02 = next(p for p in GRADED if p.name.startswith("02_"))
    # bob: notebooks 01 and 02 solved except one exercise each, whose answer passes the visible test but not the hidden ones
    for rel, src, override in ((nb01, src01, {"01-gd-step": WRONG_GD_STEP}), (nb02, src02, {"02-first-order": WRONG_FIRST_ORDER})):
        (subs / "bob" / rel.parent.name).mkdir(parents=True)
        nbformat.write(A.solved_copy(_read(rel), _read(src), override), subs / "bob" / rel.parent.name / rel.name)
    # carol: hands in notebook 01 untouched (nothing solved)
    (subs / "carol" / nb01.parent.name).mkdir(parents=True)
    shutil.copy(nb01, subs / "carol" / nb01.parent.name / nb01.name)

    scores = A.grade(subs, notebooks=NOTEBOOKS, course_dir=course, smoke=True, threads=1)
    table = A.score_table(scores)
    with capsys.disabled():
        print("\n" + table)
    by = {(s.student, s.grade_id): s for s in scores}
    alice = [s for s in scores if s.student == "alice"]
    assert len(alice) == sum(len(A.exercises_of(_read(p))) for p in GRADED if p.name[:3] in ALICE)
    assert all(s.score == s.max_score for s in alice), [s for s in alice if s.score != s.max_score]
    bob = [s for s in scores if s.student == "bob"]
    assert {s.assignment for s in bob} == {nb01.parent.name, nb02.parent.name}
    wrong = {"01-gd-step-tests", "02-first-order-tests"}
    assert all(by[("bob", g)].score == 0.0 for g in wrong)
    assert all(s.score == s.max_score for s in bob if s.grade_id not in wrong), bob   # each loses only its own points
    carol = [s for s in scores if s.student == "carol"]
    assert carol and all(s.score == 0.0 for s in carol), carol
    # the autograded copy of bob's notebook tells him which hidden test failed
    graded = _read(course / "autograded" / "bob" / nb01.parent.name / nb01.name)
    cell = next(c for c in graded.cells if A.nbgrader_meta(c).get("grade_id") == "01-gd-step-tests")
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and "random W0" in errors[0]["evalue"], errors
    graded = _read(course / "autograded" / "bob" / nb02.parent.name / nb02.name)
    cell = next(c for c in graded.cells if A.nbgrader_meta(c).get("grade_id") == "02-first-order-tests")
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and "W ≠ 0" in errors[0]["evalue"], errors
    lines = table.splitlines()
    assert lines[0].split() == ["exercise", "alice", "bob", "carol"]
    assert any(line.startswith("01_icl_is_implicit_gradient_descent/01-gd-step-tests") and line.split()[1:] == ["2/2", "0/2", "0/2"]
               for line in lines), table
    n_bob = sum(s.max_score for s in bob)
    n01 = sum(s.max_score for s in bob if s.assignment == nb01.parent.name)
    lost = sum(by[("bob", g)].max_score for g in wrong)
    assert lines[-1].split() == ["total", f"{sum(s.max_score for s in alice):g}/{sum(s.max_score for s in alice):g}",
                                 f"{n_bob - lost:g}/{n_bob:g}", f"0/{n01:g}"], table


def test_grade_command_explains_a_missing_or_empty_folder(tmp_path, capsys):
    assert A.main(["grade", str(tmp_path / "nope"), "--course-dir", str(tmp_path / "course")]) == 2
    assert "expected <student>/<assignment>/<notebook>.ipynb" in capsys.readouterr().err
    (tmp_path / "empty" / "alice").mkdir(parents=True)
    assert A.main(["grade", str(tmp_path / "empty"), "--course-dir", str(tmp_path / "course")]) == 2
    assert "No notebooks in" in capsys.readouterr().err


def test_a_failed_check_shows_its_message_without_library_frames():
    """In IPython (the notebook's shell) a failed check prints its message, not this library's code."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    import icp_course.checks as checks

    shell = InteractiveShell.instance()
    checks._install_ipython_handler()
    with capture_output() as cap:
        shell.run_cell("from icp_course.checks import expect_close\n"
                       "expect_close([1.0, 2.0], [1.0, 3.0], what='my_fn on two points', hint='add, do not multiply')")
    out = re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout)
    assert "CheckFailed: my_fn on two points: expected [1. 3.], got [1. 2.] (largest |difference| 1)" in out
    assert "Hint: add, do not multiply" in out
    assert "checks.py" not in out and "_fail" not in out and "raise" not in out
    assert issubclass(checks.CheckFailed, AssertionError)          # what nbgrader and pytest count as a failure
    with capture_output() as cap:                                  # any other error keeps its full traceback
        shell.run_cell("def f():\n    return 1 / 0\nf()")
    assert "ZeroDivisionError" in cap.stdout and "----> 2" in re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout)
