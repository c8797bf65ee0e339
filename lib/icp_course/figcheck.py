"""Is a figure readable? Checks on the drawn figure, from matplotlib's own text extents.

:func:`problems` draws a figure and lists what a student would see as broken:

* **overlapping tick labels** on any axis (two visible labels whose boxes intersect);
* **text outside the figure** (a legend, a title, an axis or tick label cut off at the edge);
* **layout warnings** raised while drawing (``constrained_layout not applied``, tight-layout failures);
* **a valuator in someone else's colour**: a legend entry named for a valuator (its name or its
  readable label, :mod:`icp_course.style`) drawn in a colour other than the course's colour for it.

The notebooks' smoke runs check every figure they render (:func:`install`, switched on by the
environment variable ``ICP_FIGCHECK``; ``tests/test_notebooks.py`` sets it), and
``tests/test_figcheck.py`` shows each check failing on a deliberately broken figure.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

#: Pixels of slack: boxes that touch by less than this are not called overlapping or cut off.
SLACK_PX = 1.0
#: Substrings of the warnings that mean the layout engine gave up.
LAYOUT_WARNINGS = ("constrained_layout", "tight_layout", "Tight layout", "layout not applied")


class FigureProblem(AssertionError):
    """A figure a student cannot read (raised by the checker installed with ``ICP_FIGCHECK=raise``)."""


def _name(fig) -> str:
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return repr(sup or (titles[0] if titles else f"figure with {len(fig.axes)} axes"))


def _visible_texts(texts) -> list:
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _shrunk(bb):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(bb.x0 + SLACK_PX, bb.y0 + SLACK_PX, bb.x1 - SLACK_PX, bb.y1 - SLACK_PX)


def _drawn_ticklabels(axis) -> list:
    """The tick labels the axis draws: ticks inside the view interval (``get_ticklabels`` also
    returns labels of ticks beyond the limits, which are never drawn)."""
    ticks = axis._update_ticks()   # what Axis.draw itself draws
    return _visible_texts([lab for t in ticks for lab in (t.label1, t.label2) if lab.get_visible()])


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    """Pairs of labels that collide. Labels set at an angle are compared across their lines:
    two parallel lines of text collide when the distance between their centres (the centre of a
    label's box lies on its line, whatever its alignment), measured perpendicular to the text, is
    less than a line's height (the axis-aligned boxes of rotated labels always overlap a little
    and say nothing)."""
    import numpy as np

    texts = _visible_texts(texts)
    out = []
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            ang = a.get_rotation() % 180
            if ang in (0, 90) or ang != b.get_rotation() % 180:
                if _shrunk(a.get_window_extent(renderer)).overlaps(_shrunk(b.get_window_extent(renderer))):
                    out.append((a.get_text(), b.get_text()))
                continue
            ba, bb = a.get_window_extent(renderer), b.get_window_extent(renderer)
            th = np.radians(ang)
            dx, dy = (bb.x0 + bb.x1 - ba.x0 - ba.x1) / 2, (bb.y0 + bb.y1 - ba.y0 - ba.y1) / 2
            across = abs(-dx * np.sin(th) + dy * np.cos(th))
            line_px = max(a.get_fontsize(), b.get_fontsize()) * a.figure.dpi / 72
            if _shrunk(ba).overlaps(_shrunk(bb)) and across < line_px:
                out.append((a.get_text(), b.get_text()))
    return out


def _outside(bb, fig_bb) -> bool:
    return (bb.x0 < fig_bb.x0 - SLACK_PX or bb.y0 < fig_bb.y0 - SLACK_PX or bb.x1 > fig_bb.x1 + SLACK_PX
            or bb.y1 > fig_bb.y1 + SLACK_PX)


def _handle_color(handle: Any) -> Any:
    for getter in ("get_color", "get_facecolor", "get_edgecolor"):
        fn = getattr(handle, getter, None)
        if fn is None:
            continue
        c = fn()
        try:
            import numpy as np

            arr = np.asarray(c, dtype=float)
            if arr.ndim == 2:
                if not len(arr):
                    continue
                arr = arr[0]
            if arr.shape in ((3,), (4,)) and (arr.shape == (3,) or arr[3] > 0):
                return arr[:3]
        except (TypeError, ValueError):
            if isinstance(c, str) and c != "none":
                return c
    return None


def _wrong_colours(fig) -> list[str]:
    import matplotlib.colors as mcolors

    from icp_course import style

    out = []
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    for leg in (lg for lg in legends if lg is not None):
        for handle, text in zip(leg.legend_handles, leg.get_texts()):
            want = style.color(text.get_text())
            got = _handle_color(handle) if handle is not None else None
            if want is None or got is None:
                continue
            if mcolors.to_hex(got) != mcolors.to_hex(want):
                out.append(f"legend entry {text.get_text()!r} is drawn in {mcolors.to_hex(got)}, not its course colour "
                           f"{mcolors.to_hex(want)}")
    return out


def problems(fig) -> list[str]:
    """What is wrong with ``fig`` as drawn (an empty list: nothing found)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    out = [f"layout warning: {w.message}" for w in caught if any(s in str(w.message) for s in LAYOUT_WARNINGS)]
    r = fig.canvas.get_renderer()
    fig_bb = fig.bbox
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        where = f"axes {i}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        xt, yt = (_drawn_ticklabels(ax.xaxis), _drawn_ticklabels(ax.yaxis)) if ax.axison else ([], [])
        for axis, ticks in (("x", xt), ("y", yt)):
            pairs = _overlapping(ticks, r)
            if pairs:
                a, b = pairs[0]
                out.append(f"{where}: {len(pairs)} overlapping {axis} tick label pair(s), e.g. {a!r} and {b!r}")
        texts = [ax.title, *([ax.xaxis.label, ax.yaxis.label] if ax.axison else []), *xt, *yt]
        for t in _visible_texts(texts):
            if _outside(t.get_window_extent(r), fig_bb):
                out.append(f"{where}: text {t.get_text()!r} runs outside the figure")
        leg = ax.get_legend()
        if leg is not None and leg.get_visible() and _outside(leg.get_window_extent(r), fig_bb):
            out.append(f"{where}: the legend runs outside the figure")
    for leg in fig.legends:
        if leg.get_visible() and _outside(leg.get_window_extent(r), fig_bb):
            out.append("the figure legend runs outside the figure")
    out += _wrong_colours(fig)
    return out


def check(fig) -> None:
    """Raise :class:`FigureProblem` listing every problem of ``fig``."""
    found = problems(fig)
    if found:
        raise FigureProblem(f"figure {_name(fig)} is not readable:\n- " + "\n- ".join(found))


_INSTALLED = False


def install(mode: str | None = None) -> bool:
    """Check every figure when it is rendered (``print_figure``: inline display, ``savefig``).

    ``mode``: ``"warn"`` (a message on stderr, which the notebook test fails on) or ``"raise"``
    (a :class:`FigureProblem`; in a notebook IPython shows it as an error output of the display,
    but the cell itself does not fail); default: the environment variable ``ICP_FIGCHECK``
    (unset, empty, ``0``/``off``/``no``/``false``: do nothing; ``1``/``on``/``yes``/``true``:
    warn; anything else: a warning, and nothing installed). Returns whether the checker is
    installed. Idempotent.
    """
    global _INSTALLED
    mode = (mode if mode is not None else os.environ.get("ICP_FIGCHECK", "")).strip().lower()
    if not mode or mode in ("0", "off", "no", "false") or _INSTALLED:
        return _INSTALLED
    if mode in ("1", "on", "yes", "true"):
        mode = "warn"
    if mode not in ("raise", "warn"):
        warnings.warn(f"ICP_FIGCHECK={mode!r} is not 'warn' or 'raise': figures are not checked.", stacklevel=2)
        return False
    from matplotlib.backend_bases import FigureCanvasBase

    original = FigureCanvasBase.print_figure

    def print_figure(self, *args: Any, **kwargs: Any):
        found = problems(self.figure)
        if found:
            msg = f"figure {_name(self.figure)} is not readable:\n- " + "\n- ".join(found)
            if mode == "warn":
                import sys

                print(msg, file=sys.stderr)
            else:
                raise FigureProblem(msg)
        return original(self, *args, **kwargs)

    print_figure._figcheck_original = original  # type: ignore[attr-defined]
    FigureCanvasBase.print_figure = print_figure  # type: ignore[method-assign]
    _INSTALLED = True
    return True


def uninstall() -> None:
    """Undo :func:`install`."""
    global _INSTALLED
    from matplotlib.backend_bases import FigureCanvasBase

    original = getattr(FigureCanvasBase.print_figure, "_figcheck_original", None)
    if original is not None:
        FigureCanvasBase.print_figure = original  # type: ignore[method-assign]
    _INSTALLED = False
