"""Explanatory diagrams, drawn by code (no pasted images).

* :func:`plot_icp_layout` — the token layout of one in-context-probing measurement
  (notebooks 00 and 04): ``demonstration z | query x_p | answer y_p`` with the answer tokens
  marked as the only scored ones, and below it the zero-shot baseline (the same query and
  answer without the demonstration), then ``Δ = ll(p|z) − ll(p)``.
* :func:`plot_lsa_gd_diagram` — linear self-attention as one gradient-descent step
  (notebook 01): the tokens ``(x_i, y_i)``, ``W_K = W_Q`` reading the x-block, ``W_V`` taking
  ``y``, the update ``ΔW`` and the prediction ``ŷ``.

Both return the ``matplotlib`` Figure; the tests read their text back
(:func:`figure_texts`).
"""
from __future__ import annotations

from icp_course.style import figure

from typing import Mapping, Sequence

from .tokens import decode_tokens

SEGMENT_COLORS = {"prefix": "#f6d7a7", "query": "#cfe3f3", "answer": "#9fd89f"}
SEGMENT_NAMES = {"prefix": "demonstration z", "query": "query x_p", "answer": "answer y_p"}


def figure_texts(fig) -> list[str]:
    """Every text drawn on ``fig`` (figure texts, axes texts, titles, tick and legend labels)."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        out += [ax.get_title(loc=k) for k in ("left", "center", "right")]
        out += [ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    return [t for t in out if t]


# ------------------------------------------------------------------ ICP token layout
def layout_segments(tokenizer, enc) -> dict[str, list[str]]:
    """The visible token strings of an :class:`~icp_influence.encoding.Encoded`, by segment."""
    return {"prefix": decode_tokens(tokenizer, enc.prefix_ids), "query": decode_tokens(tokenizer, enc.query_ids),
            "answer": decode_tokens(tokenizer, enc.answer_ids)}


def _shorten(tokens: Sequence[str], keep: int) -> list[str]:
    tokens = list(tokens)
    if len(tokens) <= keep:
        return tokens
    head = max(1, keep - 2)
    return tokens[:head] + [f"…+{len(tokens) - head - 1}…"] + tokens[-1:]


def _clip(text: str, n: int = 7) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_icp_layout(with_demo: Mapping[str, Sequence[str]], zero_shot: Mapping[str, Sequence[str]], *,
                    max_per_segment: int = 6, title: str | None = None):
    """What one ICP measurement feeds the model, and which tokens it scores.

    ``with_demo`` / ``zero_shot``: ``{"prefix": [...], "query": [...], "answer": [...]}``
    token strings (:func:`layout_segments`), for the pair with the demonstration and for the
    probe alone. Long segments are shortened to ``max_per_segment`` boxes (``…+n…`` stands
    for the hidden ones). The two rows are aligned on the query, so the baseline reads as
    "the same sequence with the demonstration removed".
    """
    from matplotlib.patches import FancyBboxPatch, Patch

    rows = {"with": {k: _shorten(with_demo.get(k, []), max_per_segment) for k in ("prefix", "query", "answer")},
            "zero": {k: _shorten(zero_shot.get(k, []), max_per_segment) for k in ("prefix", "query", "answer")}}
    w, gap = 1.0, 0.35
    n_prefix = len(rows["with"]["prefix"])
    q0 = n_prefix * w + gap                              # the query starts here in both rows
    a0 = q0 + len(rows["with"]["query"]) * w + gap       # and the answer here
    end = a0 + len(rows["with"]["answer"]) * w
    fig, ax = figure(figsize=(max(8.0, 0.62 * end + 3.2), 4.3))
    ys = {"with": 2.3, "zero": 0.55}

    def boxes(row: str, seg: str, x0: float) -> None:
        for i, tok in enumerate(rows[row][seg]):
            scored = seg == "answer"
            ax.add_patch(FancyBboxPatch((x0 + i * w + 0.04, ys[row]), w - 0.08, 0.62, boxstyle="round,pad=0.02",
                                        fc=SEGMENT_COLORS[seg], ec="#1b7a1b" if scored else "#777777",
                                        lw=2.0 if scored else 0.8))
            ax.text(x0 + i * w + w / 2, ys[row] + 0.31, _clip(tok), ha="center", va="center", fontsize=7,
                    fontweight="bold" if scored else "normal")

    boxes("with", "prefix", 0.0)
    boxes("with", "query", q0)
    boxes("with", "answer", a0)
    zp = rows["zero"]["prefix"]
    boxes("zero", "prefix", q0 - gap - len(zp) * w)
    boxes("zero", "query", q0)
    boxes("zero", "answer", a0)
    if n_prefix - len(zp) > 0:  # where the demonstration was
        x1 = q0 - gap - len(zp) * w
        ax.add_patch(FancyBboxPatch((0.04, ys["zero"]), x1 - 0.08, 0.62, boxstyle="round,pad=0.02", fc="none",
                                    ec="#999999", ls="--", lw=0.8))
        ax.text(x1 / 2, ys["zero"] + 0.31, "no demonstration", ha="center", va="center", fontsize=8, color="#666666",
                style="italic")

    # segment labels (above the first row)
    def bracket(x0: float, x1: float, text: str, color: str) -> None:
        y = ys["with"] + 0.8
        ax.plot([x0 + 0.05, x0 + 0.05, x1 - 0.05, x1 - 0.05], [y - 0.08, y, y, y - 0.08], color=color, lw=1.2)
        ax.text((x0 + x1) / 2, y + 0.1, text, ha="center", va="bottom", fontsize=8.5, color=color)

    bracket(0.0, n_prefix * w, "demonstration z\n(context: not scored)", "#9a5b00")
    bracket(q0, a0 - gap, "query x_p\n(context: not scored)", "#1f5f8b")
    bracket(a0, end, "answer y_p\n(scored)", "#1b7a1b")

    # row labels and the sums
    ax.text(-0.3, ys["with"] + 0.31, "with demonstration\nll(p | z)", ha="right", va="center", fontsize=9)
    ax.text(-0.3, ys["zero"] + 0.31, "zero-shot baseline\nll(p)", ha="right", va="center", fontsize=9)
    ax.text((a0 + end) / 2, ys["with"] - 0.12, "ll(p | z) = Σ_t log p(y_t | z, x_p, y_<t)", ha="center", va="top",
            fontsize=8, color="#1b7a1b")
    ax.text((a0 + end) / 2, ys["zero"] - 0.12, "ll(p) = Σ_t log p(y_t | x_p, y_<t)", ha="center", va="top",
            fontsize=8, color="#1b7a1b")
    ax.text(end / 2, -0.55, "Δ(z, p) = ll(p | z) − ll(p)   (nats; positive = z helps p). "
            "Only the answer tokens are scored; the baseline is computed once per probe.",
            ha="center", va="center", fontsize=9)
    ax.legend(handles=[Patch(fc=SEGMENT_COLORS["prefix"], ec="#777777", label="demonstration token (context)"),
                       Patch(fc=SEGMENT_COLORS["query"], ec="#777777", label="query token (context)"),
                       Patch(fc=SEGMENT_COLORS["answer"], ec="#1b7a1b", lw=2, label="answer token (scored)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    ax.set_xlim(-3.6, end + 0.2)
    ax.set_ylim(-0.9, ys["with"] + 1.55)
    ax.axis("off")
    ax.set_title(title or "What in-context probing scores (␣ = space, ↵ = newline)", fontsize=10)
    return fig


def plot_icp_layout_for(tokenizer, probe, demo, *, template: str = "paper", max_per_segment: int = 6,
                        title: str | None = None):
    """:func:`plot_icp_layout` of the real token ids of ``(demo, probe)`` under ``template``."""
    from icp_influence.encoding import encode_pair

    with_demo = encode_pair(tokenizer, probe, demo, template=template)
    zero = encode_pair(tokenizer, probe, None, template=template)
    return plot_icp_layout(layout_segments(tokenizer, with_demo), layout_segments(tokenizer, zero),
                           max_per_segment=max_per_segment, title=title)


# ------------------------------------------------------------------ LSA = one GD step
def _block_matrix(ax, x0: float, y0: float, size: float, entries: Sequence[Sequence[str]], title: str,
                  caption: str, *, highlight: Sequence[tuple[int, int]] = ()) -> None:
    """A 2×2 block matrix drawn as a grid (blocks: the x-part d and the y-part 1)."""
    from matplotlib.patches import Rectangle

    big, small = 0.72 * size, 0.28 * size
    widths, heights = [big, small], [big, small]
    y = y0 + size
    for r in range(2):
        x = x0
        y -= heights[r]
        for c in range(2):
            hl = (r, c) in highlight
            ax.add_patch(Rectangle((x, y), widths[c], heights[r], fc="#fde9b8" if hl else "white", ec="#444444", lw=0.8))
            ax.text(x + widths[c] / 2, y + heights[r] / 2, entries[r][c], ha="center", va="center",
                    fontsize=9 if hl else 8)
            x += widths[c]
    ax.text(x0 + size / 2, y0 + size + 0.12, title, ha="center", va="bottom", fontsize=10)
    ax.text(x0 + size / 2, y0 - 0.12, caption, ha="center", va="top", fontsize=8, color="#333333")


def plot_lsa_gd_diagram(n_context: int = 4):
    """Linear self-attention as one gradient-descent step (von Oswald et al. 2023).

    Left: the tokens ``e_i = (x_i, y_i)`` and the query ``e_q = (x_q, 0)``. Middle: the
    constructed weights — ``W_K = W_Q`` keep the x-block (so the attention score is
    ``x_iᵀx_q``), ``W_V`` keeps only ``y`` (scaled by ``−η``), ``P = I``. Right: the update
    ``ΔW`` the context applies and the prediction ``ŷ = −[e_q]_y = W_1 x_q``.
    """
    from matplotlib.patches import FancyArrowPatch, Rectangle

    fig, ax = figure(figsize=(11.5, 6.6))
    # tokens
    cw, xh, yh = 0.55, 1.5, 0.45
    x0, y0 = 0.0, 0.6
    labels = [f"$e_{{{i + 1}}}$" for i in range(n_context)] + ["$e_q$"]
    for j, lab in enumerate(labels):
        x = x0 + j * cw + (0.25 if j == n_context else 0.0)
        query = j == n_context
        ax.add_patch(Rectangle((x, y0 + yh), cw - 0.05, xh, fc="#cfe3f3", ec="#1f5f8b", lw=0.8))
        ax.add_patch(Rectangle((x, y0), cw - 0.05, yh - 0.05, fc="white" if query else "#f6d7a7", ec="#9a5b00", lw=0.8))
        ax.text(x + (cw - 0.05) / 2, y0 + yh + xh / 2, "$x_q$" if query else f"$x_{{{j + 1}}}$", ha="center",
                va="center", fontsize=10)
        ax.text(x + (cw - 0.05) / 2, y0 + (yh - 0.05) / 2, "$0$" if query else f"$y_{{{j + 1}}}$", ha="center",
                va="center", fontsize=10)
        ax.text(x + (cw - 0.05) / 2, y0 + yh + xh + 0.1, lab, ha="center", va="bottom", fontsize=10)
    right = x0 + (n_context + 1) * cw + 0.25
    ax.text(-0.15, y0 + yh + xh / 2, "x-block\n(d rows)", ha="right", va="center", fontsize=8, color="#1f5f8b")
    ax.text(-0.15, y0 + yh / 2, "y row", ha="right", va="center", fontsize=8, color="#9a5b00")
    ax.text(right / 2, y0 + yh + xh + 0.55, "tokens $e_i = (x_i, y_i)$, query $e_q = (x_q, 0)$",
            ha="center", va="bottom", fontsize=10)
    ax.text(right / 2, y0 - 0.15, "context: N pairs of the task\n$y_i = w^\\top x_i$", ha="center", va="top",
            fontsize=8, color="#333333")

    # the constructed weights
    mx = right + 1.0
    ax.add_patch(FancyArrowPatch((right + 0.05, 1.8), (mx - 0.1, 1.8), arrowstyle="-|>", mutation_scale=14,
                                 color="#555555"))
    _block_matrix(ax, mx, 1.05, 1.45, [["$I_d$", "$0$"], ["$0$", "$0$"]], "$W_K = W_Q$",
                  "keep the x-block:\n$(W_K e_i)^\\top (W_Q e_q) = x_i^\\top x_q$", highlight=[(0, 0)])
    _block_matrix(ax, mx + 2.6, 1.05, 1.45, [["$0$", "$0$"], ["$0$", "$-\\eta$"]], "$W_V$",
                  "takes y:\n$W_V e_i = (0,\\ -\\eta\\, y_i)$", highlight=[(1, 1)])
    _block_matrix(ax, mx + 5.2, 1.05, 1.45, [["$I_d$", "$0$"], ["$0$", "$1$"]], "$P = I$",
                  "adds the update\nto the token")

    # the update and the prediction (below)
    lines = [
        ("layer", "$e_q \\leftarrow e_q + P\\,\\frac{1}{N}\\sum_i (W_V e_i)(W_K e_i)^\\top W_Q\\, e_q$"),
        ("update", "$\\Delta W = \\frac{1}{N}\\sum_i (W_V e_i)(W_K e_i)^\\top$;  its y-row on the x-block is "
                   "$-\\frac{\\eta}{N}\\sum_i y_i x_i^\\top = -(W_1 - W_0)$"),
        ("GD step", "$W_1 = W_0 - \\eta \\nabla L(W_0)$ on $L(W) = \\frac{1}{2N}\\sum_i (W x_i - y_i)^2$ from $W_0 = 0$"),
        ("prediction", "$\\hat{y} = -[e_q]_y = \\frac{\\eta}{N}\\sum_i y_i\\, x_i^\\top x_q = W_1 x_q$"
                       "   (one GD step, exactly)"),
    ]
    for k, (name, text) in enumerate(lines):
        y = -0.75 - 0.62 * k
        ax.text(0.0, y, name, ha="left", va="center", fontsize=9, color="#1b7a1b", fontweight="bold")
        ax.text(1.6, y, text, ha="left", va="center", fontsize=11)
    ax.set_xlim(-1.4, mx + 6.9)
    ax.set_ylim(-3.0, 3.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Linear self-attention as one step of gradient descent", fontsize=11)
    return fig
