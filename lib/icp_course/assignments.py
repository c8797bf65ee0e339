"""Exercises graded the way Jupyter courses grade them: with nbgrader.

The notebooks in ``notebooks/`` are nbgrader *source* notebooks. An exercise is three cells:
a Markdown statement; a **solution cell** (nbgrader metadata ``solution: true``) holding the
function the student writes, its body between ``### BEGIN SOLUTION`` and
``### END SOLUTION``; and an **autograded test cell** (``grade: true, locked: true,
points: N``) with visible asserts and hidden ones between ``### BEGIN HIDDEN TESTS`` and
``### END HIDDEN TESTS`` that check the function on inputs the notebook does not show.
Only notebooks with at least one graded cell become assignments (one assignment per
notebook, named after it: ``00_start_here``, ...).

The course directory is built by code (``build/nbgrader/``)::

    nbgrader_config.py                         written by write_course()
    source/<assignment>/<notebook>.ipynb        the notebook, outputs cleared, Colab badge → student note
    release/<assignment>/<notebook>.ipynb       nbgrader generate_assignment (solutions and hidden tests removed)
    submitted/<student>/<assignment>/...        copied from the SUBMISSIONS folder by `grade`
    autograded/<student>/<assignment>/...       nbgrader autograde (hidden tests restored, executed)
    gradebook.db                                nbgrader's gradebook (sqlite)

Commands (``make release``, ``make grade SUBMISSIONS=folder``)::

    python -m icp_course.assignments release [--out build/release]
    python -m icp_course.assignments grade SUBMISSIONS [--full]

``release`` copies the student versions to ``build/release/<assignment>/`` (what students
get). ``grade`` takes a folder in nbgrader's layout ``<student>/<assignment>/<notebook>.ipynb``
(or one holding ``submitted/<student>/...``), autogrades every submission in smoke mode
(``--full``: default sizes) and prints a score table: one row per exercise, one column per
student. Autograding executes the whole notebook with errors allowed, so an unsolved or
wrong exercise costs its own points and nothing else.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from icp_course.colab import BADGE_RE

COURSE_DIR = Path("build/nbgrader")
RELEASE_DIR = Path("build/release")
COURSE_ID = "icp-influence"
#: A Markdown line carrying this comment is dropped from the student release (e.g. "students: use your release").
INSTRUCTOR_ONLY = "<!-- not in the student release -->"
STUDENT_NOTE = ("> **Your copy** (student release of `notebooks/{name}`, made by `make release` with nbgrader). "
                "In each exercise, write your code where it says `# YOUR CODE HERE` (delete the "
                "`raise NotImplementedError()` line), then run the test cell below it: no error means your code "
                "passes the visible tests; hidden tests on other inputs run when your notebook is graded. "
                "Keep the file name and do not edit the test cells. In Google Colab: *File → Upload notebook*, "
                "then run the install cell below.")


class NbgraderError(RuntimeError):
    """An nbgrader command failed; the message carries the end of its log."""


# ----------------------------------------------------------------------------------------
# Reading nbgrader metadata
# ----------------------------------------------------------------------------------------
def nbgrader_meta(cell) -> dict[str, Any]:
    return dict(cell.get("metadata", {}).get("nbgrader", {}) or {})


def is_graded(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade"))


def is_solution(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


@dataclass(frozen=True)
class Exercise:
    """One autograded test cell: its ``grade_id`` and points."""

    grade_id: str
    points: float


def exercises_of(nb) -> list[Exercise]:
    """The graded cells of a notebook node, in order."""
    return [Exercise(nbgrader_meta(c)["grade_id"], float(nbgrader_meta(c).get("points", 0)))
            for c in nb.cells if is_graded(c)]


def graded_notebooks(notebooks: str | Path = "notebooks") -> list[Path]:
    """The notebooks of ``notebooks`` that hold at least one autograded cell (the assignments)."""
    import nbformat

    from icp_course.nbrun import list_notebooks

    return [p for p in list_notebooks(notebooks) if exercises_of(nbformat.read(p, as_version=4))]


def assignment_name(path: str | Path) -> str:
    return Path(path).stem


# ----------------------------------------------------------------------------------------
# The course directory
# ----------------------------------------------------------------------------------------
def sliced_poll_execute():
    """nbgrader's ``Execute`` preprocessor with the re-polling kernel client of :mod:`icp_course.nbrun`.

    On a loaded machine the client can miss the wake-up of a reply the kernel has already
    sent and wait for the whole cell timeout; re-polling every second picks it up
    (:func:`icp_course.nbrun._sliced`). Autograding uses this class instead of ``Execute``.
    """
    from nbgrader.preprocessors import Execute

    from icp_course.nbrun import sliced_poll

    return sliced_poll(Execute)


def autograde_preprocessors() -> list:
    """nbgrader's autograde preprocessors, with ``Execute`` replaced by :func:`sliced_poll_execute`."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    execute = sliced_poll_execute()
    default = Autograde.class_traits()["autograde_preprocessors"].default()
    return [execute if p is Execute else p for p in default]


def nbgrader_config(course_dir: Path) -> str:
    return f'''# Written by icp_course.assignments (`make release` rewrites it): nbgrader's course settings.
import os
from icp_course.assignments import autograde_preprocessors
c = get_config()
c.CourseDirectory.root = {str(course_dir.resolve())!r}
c.CourseDirectory.course_id = {COURSE_ID!r}
# Autograding executes whole notebooks (smoke mode unless `grade --full`): allow slow cells, keep going on errors.
c.Execute.timeout = int(os.environ.get("ICP_GRADE_TIMEOUT", "900"))
# A kernel on a busy machine can take longer than the default 60 s to start; then nothing of the notebook is graded.
c.Execute.startup_timeout = int(os.environ.get("ICP_KERNEL_STARTUP_TIMEOUT", "600"))
c.Execute.allow_errors = True
c.Autograde.autograde_preprocessors = autograde_preprocessors()  # Execute → the re-polling client (nbrun)
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.enforce_metadata = True
'''


def source_notebook(nb, name: str):
    """The nbgrader source version of notebook ``name``: no outputs, the Colab badge (which
    opens the instructor's notebook) replaced by a note for students, Markdown lines marked
    :data:`INSTRUCTOR_ONLY` dropped."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and INSTRUCTOR_ONLY in cell.source:
            text = "\n".join(line for line in cell.source.split("\n") if INSTRUCTOR_ONLY not in line)
            cell.source = re.sub(r"\n{3,}", "\n\n", text)
    md = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if md is not None:
        note = STUDENT_NOTE.format(name=name)
        if BADGE_RE.search(md.source):
            md.source = BADGE_RE.sub(lambda m: note, md.source, count=1)
        else:
            head, sep, rest = md.source.partition("\n")
            md.source = head + "\n\n" + note + ("\n" + rest if sep else "")
    return nb


def write_course(notebooks: str | Path = "notebooks", course_dir: str | Path = COURSE_DIR) -> list[str]:
    """Write ``nbgrader_config.py`` and ``source/<assignment>/`` for every graded notebook; returns the assignments."""
    import nbformat

    course_dir = Path(course_dir)
    (course_dir / "source").mkdir(parents=True, exist_ok=True)
    (course_dir / "nbgrader_config.py").write_text(nbgrader_config(course_dir), encoding="utf-8")
    names = []
    for path in graded_notebooks(notebooks):
        name = assignment_name(path)
        folder = course_dir / "source" / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        nbformat.write(source_notebook(nbformat.read(path, as_version=4), path.name), folder / path.name)
        names.append(name)
    return names


def nbgrader_env(*, smoke: bool = True, threads: int | None = None) -> dict[str, str]:
    """The environment of nbgrader and the kernels it starts: this Python's bin first on PATH
    (nbgrader runs ``alembic`` from there), offline, figures inline, smoke mode unless ``smoke=False``."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["PYTHONUNBUFFERED"] = "1"
    if smoke:
        env["ICP_SMOKE"] = "1"
    else:
        env.pop("ICP_SMOKE", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    return env


def run_nbgrader(course_dir: str | Path, *args: str, env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    """``nbgrader ARGS`` in ``course_dir`` (where its config lives); raises :class:`NbgraderError` on failure."""
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course_dir, env=env or nbgrader_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise NbgraderError(f"`nbgrader {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


def generate(course_dir: str | Path, assignments: Iterable[str], env: dict[str, str] | None = None) -> None:
    """``nbgrader generate_assignment --force`` for each assignment (also records it in the gradebook)."""
    for name in assignments:
        run_nbgrader(course_dir, "generate_assignment", name, "--force", env=env)


RELEASE_README = """# Your copies of the course notebooks

Each folder is one assignment: open the notebook inside it in JupyterLab (`jupyter lab build/release`),
write your code where it says `# YOUR CODE HERE`, and run the test cell below each exercise. Hand in the
notebook file itself, keeping its name. Made by `make release` (nbgrader) from `notebooks/`.

{rows}
"""


def release(notebooks: str | Path = "notebooks", *, course_dir: str | Path = COURSE_DIR,
            out: str | Path = RELEASE_DIR) -> list[Path]:
    """Build the course, run ``nbgrader generate_assignment`` and copy the student versions to ``out``.

    Returns the released notebooks (``out/<assignment>/<notebook>.ipynb``).
    """
    course_dir, out = Path(course_dir), Path(out)
    names = write_course(notebooks, course_dir)
    generate(course_dir, names)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(course_dir / "release" / name, target)
        written += sorted(target.glob("*.ipynb"))
    rows = "\n".join(f"- `{p.parent.name}/{p.name}`" for p in written)
    (out / "README.md").write_text(RELEASE_README.format(rows=rows), encoding="utf-8")
    return written


# ----------------------------------------------------------------------------------------
# Filling a release (tests, and instructors checking their own notebooks)
# ----------------------------------------------------------------------------------------
def solved_copy(release_nb, source_nb, overrides: dict[str, str] | None = None):
    """The released notebook with every solution cell replaced by the source's solution
    (matched by ``grade_id``), or by ``overrides[grade_id]`` — what a student who solved
    everything would hand in."""
    nb = copy.deepcopy(release_nb)
    sources = {nbgrader_meta(c)["grade_id"]: c.source for c in source_nb.cells if is_solution(c)}
    overrides = overrides or {}
    for cell in nb.cells:
        if is_solution(cell):
            gid = nbgrader_meta(cell)["grade_id"]
            cell.source = overrides.get(gid, sources[gid])
    return nb


# ----------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    student: str
    assignment: str
    notebook: str
    grade_id: str
    score: float | None      # None: not graded (no submission, or the notebook could not be executed)
    max_score: float


def submitted_root(submissions: str | Path) -> Path:
    """The folder holding ``<student>/<assignment>/`` (``SUBMISSIONS`` or ``SUBMISSIONS/submitted``)."""
    root = Path(submissions)
    if (root / "submitted").is_dir():
        root = root / "submitted"
    if not root.is_dir():
        raise FileNotFoundError(f"No submissions folder {root}: expected <student>/<assignment>/<notebook>.ipynb inside.")
    return root


def collect_submissions(submissions: str | Path) -> dict[str, list[str]]:
    """``{student: [assignment, ...]}`` found in the submissions folder."""
    root = submitted_root(submissions)
    found: dict[str, list[str]] = {}
    for student in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(a.name for a in student.iterdir() if a.is_dir() and any(a.glob("*.ipynb")))
        if names:
            found[student.name] = names
    return found


def _gradebook(course_dir: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{(course_dir / 'gradebook.db').resolve()}")


def known_assignments(course_dir: str | Path) -> set[str]:
    course_dir = Path(course_dir)
    if not (course_dir / "gradebook.db").exists():
        return set()
    with _gradebook(course_dir) as gb:
        return {a.name for a in gb.assignments}


def read_scores(course_dir: str | Path, students: dict[str, list[str]] | Sequence[str],
                assignments: Sequence[str] | None = None) -> list[Score]:
    """Every exercise of every assignment for every student, from the gradebook."""
    from nbgrader.api import MissingEntry

    course_dir = Path(course_dir)
    names = list(students)
    rows: list[Score] = []
    with _gradebook(course_dir) as gb:
        wanted = assignments or sorted({a for s in names for a in (students[s] if isinstance(students, dict) else [])})
        for aname in wanted:
            a = gb.find_assignment(aname)
            for nb in sorted(a.notebooks, key=lambda n: n.name):
                cells = sorted(nb.grade_cells, key=lambda g: _cell_order(course_dir, aname, nb.name, g.name))
                for student in names:
                    if isinstance(students, dict) and aname not in students[student]:
                        continue  # not handed in: the table shows "—"
                    try:
                        sub = {g.name: g for g in gb.find_submission_notebook(nb.name, aname, student).grades}
                    except MissingEntry:
                        sub = {}
                    for gc in cells:
                        g = sub.get(gc.name)
                        score = None if g is None or g.score is None else float(g.score)
                        rows.append(Score(student, aname, nb.name, gc.name, score, float(gc.max_score)))
    return rows


def _cell_order(course_dir: Path, assignment: str, notebook: str, grade_id: str) -> int:
    """Position of a graded cell in its source notebook (so tables follow the notebook)."""
    path = course_dir / "source" / assignment / f"{notebook}.ipynb"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return 0
    for i, c in enumerate(cells):
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            return i
    return len(cells)


def grade(submissions: str | Path, *, notebooks: str | Path = "notebooks", course_dir: str | Path = COURSE_DIR,
          smoke: bool = True, threads: int | None = None, log: Any = None) -> list[Score]:
    """Autograde every submission in ``submissions`` and return the scores.

    Assignments that the gradebook does not know yet are generated first (from ``notebooks``).
    ``submitted/`` of the course directory is replaced by the given folder, so exactly these
    submissions are graded (``nbgrader autograde --force``, hidden tests restored).
    """
    course_dir = Path(course_dir)
    found = collect_submissions(submissions)
    if not found:
        raise FileNotFoundError(f"No notebooks in {submissions}: expected <student>/<assignment>/<notebook>.ipynb.")
    env = nbgrader_env(smoke=smoke, threads=threads)
    assignments = sorted({a for names in found.values() for a in names})
    missing = [a for a in assignments if a not in known_assignments(course_dir)]
    if missing:
        available = write_course(notebooks, course_dir)
        unknown = sorted(set(missing) - set(available))
        if unknown:
            raise NbgraderError(f"Unknown assignment(s) {unknown}; the graded notebooks are {available}.")
        generate(course_dir, missing, env=env)
    target = course_dir / "submitted"
    if target.exists():
        shutil.rmtree(target)
    src = submitted_root(submissions)
    for student, names in found.items():
        for a in names:
            shutil.copytree(src / student / a, target / student / a)
    for a in assignments:
        if log:
            print(f"[grade] autograding {a} for {sum(a in n for n in found.values())} student(s) "
                  f"({'smoke mode' if smoke else 'default sizes'}) ...", file=log, flush=True)
        proc = run_nbgrader(course_dir, "autograde", a, "--force", env=env, check=False)
        if proc.returncode != 0 and log:
            print("\n".join(proc.stdout.splitlines()[-25:]), file=log, flush=True)
    return read_scores(course_dir, found, assignments)


def score_table(scores: Sequence[Score]) -> str:
    """One row per exercise (assignment / grade_id), one column per student ("—": not handed in), and
    each student's total over the assignments they handed in."""
    students = list(dict.fromkeys(s.student for s in scores))
    exercises = list(dict.fromkeys((s.assignment, s.grade_id) for s in scores))
    by = {(s.student, s.assignment, s.grade_id): s for s in scores}

    def cell(s: Score | None) -> str:
        if s is None:
            return "—"
        return "not graded" if s.score is None else f"{s.score:g}/{s.max_score:g}"

    head = ["exercise"] + students
    rows = [[f"{a}/{g}"] + [cell(by.get((st, a, g))) for st in students] for a, g in exercises]
    totals = []
    for st in students:  # over the assignments the student handed in
        mine = [by[(st, a, g)] for a, g in exercises if (st, a, g) in by]
        totals.append(f"{sum(s.score or 0.0 for s in mine):g}/{sum(s.max_score for s in mine):g}")
    rows.append(["total"] + totals)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    line = "-" * len(fmt(head))
    return "\n".join([fmt(head), line] + [fmt(r) for r in rows[:-1]] + [line, fmt(rows[-1])])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="nbgrader generate_assignment; student versions to --out")
    r.add_argument("--notebooks", default="notebooks")
    r.add_argument("--course-dir", default=str(COURSE_DIR))
    r.add_argument("--out", default=str(RELEASE_DIR))
    g = sub.add_parser("grade", help="autograde a folder of submissions (<student>/<assignment>/<notebook>.ipynb)")
    g.add_argument("submissions")
    g.add_argument("--notebooks", default="notebooks")
    g.add_argument("--course-dir", default=str(COURSE_DIR))
    g.add_argument("--full", action="store_true", help="default sizes instead of smoke mode")
    g.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the grading kernels")
    args = ap.parse_args(argv)
    if args.cmd == "release":
        written = release(args.notebooks, course_dir=args.course_dir, out=args.out)
        for p in written:
            print(f"released {p}")
        print(f"{len(written)} assignment(s) in {args.out}: give students this folder "
              f"(nbgrader course directory: {args.course_dir})")
        return 0
    try:
        scores = grade(args.submissions, notebooks=args.notebooks, course_dir=args.course_dir, smoke=not args.full,
                       threads=args.threads, log=sys.stdout)
    except (FileNotFoundError, NbgraderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(score_table(scores))
    print(f"autograded notebooks (each failing test's message under its cell): {Path(args.course_dir) / 'autograded'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
