"""House rules for every notebook: no outputs, python3 kernel, tagged parameters cell
honouring ICP_SMOKE, learning goals and time first, Summary and Exercises last, exercises
that check themselves (nbgrader test cells; their own rules are in tests/test_assignments.py)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_start_here.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert re.search(r"learning goals", first.source, re.I) and re.search(r"\b\d+\s*min", first.source)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one code cell tagged 'parameters'"
    assert 'os.environ.get("ICP_SMOKE") == "1"' in params[0].source
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^#+ .*Summary", md, re.M) and re.search(r"^#+ .*Exercises", md, re.M)
    graded = [c for c in code if c.metadata.get("nbgrader", {}).get("grade")]
    assert graded or any("check(" in c.source for c in code), \
        "exercises must check themselves: nbgrader autograded test cells (or, not yet converted, check())"
    assert not any("sys.path" in c.source for c in code), "no sys.path hacks: the package is installed"
