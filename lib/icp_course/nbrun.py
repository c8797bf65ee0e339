"""Execute notebooks headless under a real kernel, writing executed copies and HTML.

``python -m icp_course.nbrun notebooks --out build/notebooks [--smoke]`` runs every
``NN_*.ipynb`` in order and prints one progress line per notebook. ``ICP_SMOKE=1`` (or
``--smoke``) shrinks sizes. Used by ``make notebooks`` and by the test suite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NotebookRun:
    path: Path
    seconds: float
    executed: Path
    html: Path | None
    error: str | None = None


#: Seconds a kernel may take to start: on a busy laptop (or a CI machine running other work) the
#: client's default of 60 s is not enough, and the whole notebook then fails before its first cell.
STARTUP_TIMEOUT = int(os.environ.get("ICP_KERNEL_STARTUP_TIMEOUT", "600"))

def _sliced(get_msg, step: float = 1.0):
    """Wrap a channel's ``get_msg`` so it re-polls every ``step`` seconds up to its timeout.

    On a loaded machine the asyncio wake-up for a ZMQ socket can be missed: the kernel has
    sent its reply and sits idle, while the client waits for the full cell timeout. Polling
    again in short slices picks the waiting message up within ``step`` seconds.
    """
    from queue import Empty
    from time import monotonic

    from jupyter_core.utils import ensure_async

    async def wrapper(timeout: float | None = None, **kw):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = step if deadline is None else max(0.0, min(step, deadline - monotonic()))
            try:
                return await ensure_async(get_msg(timeout=left, **kw))
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    wrapper.sliced_step = step  # how a test (or a reader) tells a re-polling channel from nbclient's own
    return wrapper


def sliced_poll(base: type) -> type:
    """A subclass of the kernel-running class ``base`` (nbclient's ``NotebookClient``,
    nbgrader's ``Execute``) whose shell and IOPub reads re-poll every second (see ``_sliced``)."""

    from jupyter_core.utils import run_sync

    class SlicedPoll(base):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            kc.shell_channel.get_msg = _sliced(kc.shell_channel.get_msg)
            kc.iopub_channel.get_msg = _sliced(kc.iopub_channel.get_msg)
            return kc

        # nbclient binds its synchronous twin to the *base* coroutine at class creation
        # (``start_new_kernel_client = run_sync(async_start_new_kernel_client)``), and
        # nbconvert's ExecutePreprocessor — hence nbgrader's autograding — starts its client
        # through that twin: without this line the override above never runs there.
        start_new_kernel_client = run_sync(async_start_new_kernel_client)

    SlicedPoll.__name__ = SlicedPoll.__qualname__ = f"SlicedPoll{base.__name__}"
    return SlicedPoll


def _client_class():
    import nbclient

    return sliced_poll(nbclient.NotebookClient)


def run_in_kernel(nb, cwd: str | Path, *, smoke: bool = True, timeout: int = 900, allow_errors: bool = False) -> None:
    """Execute the notebook node ``nb`` in place under a fresh ``python3`` kernel.

    The kernel inherits ``ICP_SMOKE=1`` (when ``smoke``), ``HF_HUB_OFFLINE=1`` and an inline
    matplotlib backend; the caller's environment is restored afterwards. Channels are
    re-polled every second (see :func:`_sliced`).
    """
    saved = {k: os.environ.get(k) for k in ("ICP_SMOKE", "MPLBACKEND")}
    if smoke:
        os.environ["ICP_SMOKE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures inline, whatever the caller uses
    try:
        _client_class()(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                        startup_timeout=STARTUP_TIMEOUT, resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def list_notebooks(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def execute_notebook(path: str | Path, out_dir: str | Path, *, smoke: bool = True, timeout: int = 900,
                     html: bool = True) -> NotebookRun:
    """Run ``path`` with cwd = its folder; save the executed notebook (and HTML) in ``out_dir``.

    The copy records how it was made in ``metadata.icp_course``: ``mode`` ("smoke" or "default"),
    ``seconds``, ``executed_at`` and ``completed`` (False when a cell failed).

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell (after
    saving what ran so far).
    """
    import nbformat

    path = Path(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    executed = out / path.name
    error = None
    try:
        run_in_kernel(nb, path.parent, smoke=smoke, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - re-raised below after saving
        error = e
    seconds = time.perf_counter() - t0
    # how this copy was made, for whoever reuses it (the site labels each page with its mode)
    nb.metadata["icp_course"] = {"mode": "smoke" if smoke else "default", "seconds": round(seconds, 1),
                                 "executed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "completed": error is None}
    nbformat.write(nb, executed)
    html_path = None
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)
        html_path = executed.with_suffix(".html")
        html_path.write_text(body, encoding="utf-8")
    if error is not None:
        raise error
    return NotebookRun(path, seconds, executed, html_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="notebooks")
    p.add_argument("--out", default="build/notebooks")
    p.add_argument("--smoke", action="store_true", help="same as ICP_SMOKE=1")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = p.parse_args(argv)
    smoke = args.smoke or os.environ.get("ICP_SMOKE") == "1"
    books = list_notebooks(args.folder)
    total, failed = 0.0, []
    for i, nb in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {nb.name} {'(smoke) ' if smoke else ''}...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            run = execute_notebook(nb, args.out, smoke=smoke, timeout=args.timeout)
            print(f"ok ({run.seconds:.1f} s) -> {run.html}", flush=True)
        except Exception as e:  # noqa: BLE001
            failed.append(nb.name)
            print(f"FAILED ({time.perf_counter() - t0:.1f} s): {str(e).splitlines()[0] if str(e) else type(e).__name__}", flush=True)
        total += time.perf_counter() - t0
    print(f"{len(books) - len(failed)}/{len(books)} notebooks ok in {total:.1f} s; executed copies in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
