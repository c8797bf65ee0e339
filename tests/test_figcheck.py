"""The figure checker (icp_course.figcheck) finds each kind of unreadable figure it promises to
find, on deliberately broken figures, and passes their repaired versions. The notebooks' smoke
runs apply it to every figure they render (tests/test_notebooks.py)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from icp_course import figcheck, style  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_overlapping_tick_labels_are_found_and_rotation_repairs_them():
    names = [f"a long category name {i}" for i in range(12)]
    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    ax.bar(range(12), range(12))
    ax.set_xticks(range(12), names)
    found = figcheck.problems(fig)
    assert any("overlapping x tick label" in p for p in found), found
    ax.set_xticks(range(12), names, rotation=60, ha="right", rotation_mode="anchor")
    fig.set_size_inches(6, 5)
    assert not [p for p in figcheck.problems(fig) if "overlapping" in p]
    # rotated but crammed: the baselines are closer than a line of text
    fig2, ax2 = plt.subplots(figsize=(2, 4), layout="constrained")
    ax2.bar(range(30), range(30))
    ax2.set_xticks(range(30), [f"name {i}" for i in range(30)], rotation=45, ha="right", rotation_mode="anchor")
    assert any("overlapping x tick label" in p for p in figcheck.problems(fig2))


def test_a_legend_outside_the_figure_is_found():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.legend(loc="upper left", bbox_to_anchor=(1.5, 1.0))
    found = figcheck.problems(fig)
    assert any("legend runs outside the figure" in p for p in found), found
    fig2, ax2 = plt.subplots(figsize=(4, 3), layout="constrained")
    ax2.plot([0, 1], [0, 1], label="a line")
    style.legend_outside(ax2)               # beside the axes, inside the figure: the layout makes room
    assert figcheck.problems(fig2) == []


def test_a_layout_warning_is_found():
    fig, axes = plt.subplots(1, 2, figsize=(1.0, 1.0), layout="constrained")
    for ax in axes:
        ax.set_title("a title far too long for this tiny figure")
        ax.set_ylabel("a long label")
    found = figcheck.problems(fig)
    assert any(p.startswith("layout warning") for p in found), found


def test_a_valuator_in_another_colour_is_found():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], color=style.color("ip"), label=style.label("icp_mean_delta"))
    ax.plot([0, 1], [1, 0], color=style.color("ip"), label="inner product")
    ax.legend()
    found = figcheck.problems(fig)
    assert len(found) == 1 and "'ICP mean Δ' is drawn in" in found[0], found
    with pytest.raises(figcheck.FigureProblem, match="ICP mean Δ"):
        figcheck.check(fig)
    fig2, ax2 = plt.subplots(figsize=(4, 3), layout="constrained")
    ax2.scatter([0, 1], [0, 1], color=style.color("icp_mean_delta"), label="ICP mean Δ")
    ax2.legend()
    assert figcheck.problems(fig2) == []


def test_centred_rotated_labels_are_compared_along_their_own_lines():
    """Default rotation mode, centred labels of very different lengths (the course's bar charts): a
    long label's line runs under its short neighbour when the ticks are close (12 ticks in 7 inches,
    as drawn: 'a much much longer label' crosses 'b'), and clears it when they are far apart."""
    names = ["a", "a much much longer label", "b", "another long label here"]
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.bar(range(12), range(12))
    ax.set_xticks(range(12), names * 3, rotation=45, ha="center")
    assert any("overlapping x tick label" in p for p in figcheck.problems(fig))
    fig2, ax2 = plt.subplots(figsize=(7, 4), layout="constrained")
    ax2.bar(range(4), range(4))
    ax2.set_xticks(range(4), names, rotation=45, ha="center")
    assert not [p for p in figcheck.problems(fig2) if "overlapping" in p]


def test_an_unknown_setting_of_the_environment_variable_warns_and_installs_nothing(monkeypatch):
    monkeypatch.setenv("ICP_FIGCHECK", "loud")
    with pytest.warns(UserWarning, match="not 'warn' or 'raise'"):
        assert figcheck.install() is False


def test_the_installed_checker_reports_when_a_figure_is_rendered(tmp_path, capsys):
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], color="black", label="inner product")
    ax.legend()
    assert figcheck.install("warn")
    try:
        fig.savefig(tmp_path / "f.png")      # inline display renders through the same print_figure
    finally:
        figcheck.uninstall()
    assert "'inner product' is drawn in #000000" in capsys.readouterr().err
    fig.savefig(tmp_path / "g.png")
    assert capsys.readouterr().err == ""
