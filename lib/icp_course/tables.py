"""Results as tables a student can read: rounded numbers, intervals as ``0.71 [0.65, 0.77]``,
never raw dicts with 16-digit floats."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from icp_influence.stats import format_p as fmt_p  # p-values: "p = 0.012" / "p < 0.001" (one home: stats)


def fmt(x: Any, digits: int = 3) -> str:
    """A number rounded to ``digits`` places ("–" for missing / NaN)."""
    if x is None:
        return "–"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "–"
    if math.isinf(xf):
        return "∞" if xf > 0 else "−∞"
    return f"{xf:.{digits}f}"


def fmt_ci(value: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    """``value [lo, hi]``."""
    if ci is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def frame(rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None,
          *, digits: int = 3, index: str | None = None):
    """A pandas DataFrame of formatted strings: ``{"value", "ci"}`` pairs become ``v [lo, hi]``.

    ``rows``: a list of dicts, or ``{row name: dict}`` (then ``index`` names the first column).
    """
    import pandas as pd

    if isinstance(rows, Mapping):
        rows = [{(index or "name"): k, **v} for k, v in rows.items()]
    out = []
    for r in rows:
        line = {}
        keys = columns or [k for k in r if not k.endswith("ci")]
        for k in keys:
            v = r.get(k)
            ci = r.get("ci") if k in ("value", "spearman", "diff", "mean") else r.get(f"{k}_ci")
            line[k] = fmt_ci(v, ci, digits) if isinstance(v, (int, float)) and not isinstance(v, bool) and ci else (
                fmt(v, digits) if isinstance(v, float) else v)
        out.append(line)
    df = pd.DataFrame(out)
    df = df.astype(object).where(df.notna(), "–")   # a cell a row does not have reads "–", never "nan"
    return df.set_index(df.columns[0]) if index or isinstance(rows, Mapping) else df


def show(rows, columns=None, *, digits: int = 3, index: str | None = None, caption: str | None = None):
    """Display a formatted table (a styled DataFrame in Jupyter, aligned text elsewhere)."""
    df = frame(rows, columns, digits=digits, index=index)
    try:
        from IPython.display import display

        sty = df.style
        if caption:
            sty = sty.set_caption(caption)
        display(sty)
    except ImportError:  # pragma: no cover - outside IPython
        print(df.to_string())
    return None
