"""Every notebook executes under a real kernel in smoke mode (ICP_SMOKE=1).

Executed copies and HTML renders land in build/notebooks-smoke/ (the site and the
browser test reuse them). Per-notebook wall times are printed at the end of the run;
the budget is 120 s per notebook in smoke mode on a 2-core machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from icp_influence.nbrun import execute_notebook, list_notebooks

from .conftest import record_notebook_time

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "notebooks-smoke"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", list_notebooks(ROOT / "notebooks"), ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path):
    run = execute_notebook(path, OUT, smoke=True, timeout=600)
    record_notebook_time(path.name, run.seconds)
    import nbformat

    nb = nbformat.read(run.executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if o.get("data", {}).get("image/png"))
    assert figures >= 1, "every notebook shows at least one figure"
    assert run.seconds < 300, f"{path.name} took {run.seconds:.0f} s in smoke mode (budget 120 s)"
