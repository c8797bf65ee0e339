"""The re-polling kernel client of ``icp_course.nbrun``: what it does, and that every way of
starting a kernel client uses it (nbclient's own ``execute`` and the synchronous
``setup_kernel`` that nbconvert's ExecutePreprocessor — and so nbgrader — goes through)."""
from __future__ import annotations

import asyncio
from queue import Empty

import nbformat
import pytest

from icp_course.nbrun import _sliced, sliced_poll


def test_sliced_get_msg_polls_in_slices_until_a_message_arrives():
    calls = []

    def get_msg(timeout=None):
        calls.append(timeout)
        if len(calls) < 3:
            raise Empty
        return {"msg_type": "execute_reply"}

    msg = asyncio.run(_sliced(get_msg, step=0.25)(timeout=30))
    assert msg == {"msg_type": "execute_reply"}
    assert len(calls) == 3 and all(t == pytest.approx(0.25) for t in calls)   # three slices, none of them the whole 30 s


def test_sliced_get_msg_still_times_out():
    def never(timeout=None):
        raise Empty

    with pytest.raises(Empty):
        asyncio.run(_sliced(never, step=0.05)(timeout=0.2))


def _notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 6 * 7\nx")]
    return nb


@pytest.mark.notebooks
@pytest.mark.parametrize("path", ["nbclient-execute", "sync-setup_kernel", "nbgrader-execute"])
def test_every_kernel_start_path_gets_the_re_polling_channels(path, tmp_path):
    import nbclient

    seen = {}
    if path == "nbgrader-execute":
        from icp_course.assignments import sliced_poll_execute

        base = sliced_poll_execute()
    else:
        base = sliced_poll(nbclient.NotebookClient)

    def record(kc):
        seen["shell"] = getattr(kc.shell_channel.get_msg, "sliced_step", None)
        seen["iopub"] = getattr(kc.iopub_channel.get_msg, "sliced_step", None)

    class Probe(base):
        async def async_execute_cell(self, cell, cell_index, *args, **kw):   # nbclient's own (async) path
            record(self.kc)
            return await super().async_execute_cell(cell, cell_index, *args, **kw)

        def preprocess_cell(self, cell, resources, index):                   # nbconvert's (nbgrader's) path
            record(self.kc)
            return super().preprocess_cell(cell, resources, index)

    nb = _notebook()
    if path == "nbclient-execute":
        Probe(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elif path == "sync-setup_kernel":
        client = Probe(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        with client.setup_kernel():
            record(client.kc)
            client.execute_cell(nb.cells[0], 0)
    else:  # nbconvert's ExecutePreprocessor.preprocess, as nbgrader's autograde calls it
        Probe(timeout=120, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    assert seen == {"shell": 1.0, "iopub": 1.0}, seen
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "42"
