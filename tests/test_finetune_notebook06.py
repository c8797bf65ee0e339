"""What notebook 06 shows: p-values as text, LoRA's parameter count, the fine-tuning progress bar and
training curve, the arms figure's gain view, and what each arm selected."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence.data import Example
from icp_influence.errors import ConfigError
from icp_influence.stats import format_p


def test_format_p_never_prints_zero():
    assert format_p(0.0) == "p < 0.001" and format_p(2e-7) == "p < 0.001"
    assert format_p(0.0004) == "p < 0.001" and format_p(0.012) == "p = 0.012" and format_p(1.0) == "p = 1.000"
    assert format_p(0.004, digits=2) == "p < 0.01" and format_p(float("nan")) == "p = –" and format_p(None) == "p = –"
    with pytest.raises(ConfigError):
        format_p(1.5)
    from icp_course.tables import fmt_p

    assert fmt_p is format_p  # one home: icp_influence.stats


def test_finetune_verdict_prints_no_zero_p_value():
    from icp_influence.experiments import finetune_equivalence as FE

    res = {"base": {"p": -2.0}, "budgets": [4], "margin": {"p": 0.1},
           "arms": {"p": {"4": {"icp-top": {"mean": -1.5}, "random": {"mean": -1.9}}}},
           "equivalence": [{"pool": "p", "a": "icp-top", "b": "random", "budget": 4, "diff": 0.4, "ci": [0.3, 0.5],
                            "p_tost": 1e-9, "verdict": "different"}, ]}
    text = FE.verdict(res)
    assert "TOST p < 0.001" in text and "p = 0.000" not in text


def test_lora_parameter_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    from icp_influence.finetune import FinetuneConfig, lora_parameter_count, lora_target_modules
    from icp_influence.models import load_model

    model, _ = load_model("tiny-llama", seed=0)
    cfg = FinetuneConfig(lora_r=4)
    got = lora_parameter_count(model, cfg)
    import copy

    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=lora_target_modules(model),
                                                           task_type="CAUSAL_LM"))
    assert got["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert got["rank"] == 4 and got["total"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError):
        lora_parameter_count(model, FinetuneConfig(target_modules=["no_such_layer"]))


def test_finetune_progress_bar_counts_steps(capsys, monkeypatch):
    import functools

    import tqdm.auto

    from icp_influence.finetune import FinetuneConfig, finetune
    from icp_influence.models import load_model
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = load_model("tiny-llama", seed=0)
    train = list(make_synthetic_pool(6, families=["antonym"], seed=0))
    # tqdm redraws at most every 0.1 s; three tiny steps can finish before the first redraw, so
    # every update is drawn here (what is tested is what the bar says, not how often it redraws)
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0, miniters=1))
    _, log = finetune(model, tok, train, FinetuneConfig(method="full", max_steps=3, batch_size=2), progress=True,
                      return_log=True)
    err = capsys.readouterr().err
    assert log.steps == 3 and "fine-tune (full)" in err and "3/3" in err and "batch_loss" in err


def test_training_curve_marks_before_and_after():
    import matplotlib.pyplot as plt

    from icp_course.plots import finetune as PF

    fig = PF.training_curve([2.2, 2.4, 2.0, 2.1], steps_per_epoch=2, before=2.3, after=1.9)
    ax = fig.axes[0]
    ys = {tuple(np.round(l.get_ydata(), 3)) for l in ax.get_lines()}
    assert (2.3,) in ys and (1.9,) in ys and (2.2, 2.4, 2.0, 2.1) in ys
    assert ax.get_xlabel() and ax.get_ylabel() and [t.get_text() for t in ax.get_xticklabels()][0] == "before"
    with pytest.raises(ValueError):
        PF.training_curve([])
    # the live demo's title in default mode (a model name and a count) stays inside the figure
    from icp_course.figcheck import problems

    fig = PF.training_curve([2.2, 2.4, 2.0, 2.1] * 6, steps_per_epoch=6, before=2.3, after=1.9,
                            title="Fine-tuning smollm2-135m-instruct on 12 examples")
    assert problems(fig) == []
    plt.close("all")


def _marks(ax):
    import matplotlib.collections as mc

    dots = sorted(float(y) for c in ax.collections if isinstance(c, mc.PathCollection) for _, y in c.get_offsets())
    lines = [tuple(np.round(np.asarray(l.get_ydata(), float), 6)) for l in ax.get_lines()]
    return dots, lines


def test_arms_gain_view_moves_every_mark():
    import matplotlib.pyplot as plt

    from icp_course.plots.compare import arms_plot
    from icp_course.widgets.compare import arms_explorer

    out = {"base": -2.0, "metric_label": "log-lik (nats/token)",
           "arms": {"x": {"mean": -1.5, "ci": [-1.6, -1.4], "seeds": [-1.6, -1.5, -1.4]}}}
    d_abs, _ = _marks(arms_plot(out).axes[0])
    fig = arms_plot(out, gain=True)
    ax = fig.axes[0]
    d_gain, lines = _marks(ax)
    assert d_gain == pytest.approx([x + 2.0 for x in d_abs]) and d_gain == pytest.approx([0.4, 0.5, 0.6])
    assert (0.0, 0.0) in lines  # the base model at zero
    assert "gain over the base model" in ax.get_ylabel() and "log-lik" in ax.get_ylabel()
    plt.close("all")
    w = arms_explorer({8: out})
    assert w.update(show="gain over base")["x"] == pytest.approx((0.5, 0.4, 0.6))
    assert w.update(show="absolute")["x"] == pytest.approx((-1.5, -1.6, -1.4))
    plt.close("all")


def _ex(i, task, out, inp="w", corruption=None):
    return Example(id=f"{task}-{i}", instruction="Do it.", input=inp, output=out, task=task,
                   meta={"corruption": corruption} if corruption else {})


def test_selection_profile_counts_families_repeats_and_corruption():
    from icp_influence.experiments.finetune_equivalence import selection_profile

    ex = [_ex(0, "a", "yes"), _ex(1, "a", "yes"), _ex(2, "a", "yes", inp="v"), _ex(3, "b", "no", corruption="truncate")]
    p = selection_profile(ex)
    assert p["n"] == 4 and p["families"] == 2 and p["family_counts"] == {"a": 3, "b": 1}
    assert p["distinct_examples"] == 3 and p["distinct_answers"] == 2
    assert (p["top_answer"], p["top_answer_count"]) == ("yes", 3) and p["corrupted"] == 1
    assert p["answer_chars"] == pytest.approx((3 * 3 + 2) / 4)
    assert selection_profile(ex, corrupted=["a-0", "a-1"])["corrupted"] == 2
    with pytest.raises(ConfigError):
        selection_profile([])


def _have_finetune_result():
    from icp_influence.paths import results_dir

    return (results_dir() / "finetune-equivalence-full.json").exists() and \
        (results_dir() / "synthetic-agreement-full").exists()


@pytest.mark.skipif(not _have_finetune_result(), reason="no finetune-equivalence result committed")
def test_selection_profiles_of_the_committed_synthetic_run():
    from icp_influence.experiments import finetune_equivalence as FE

    res = FE.load("full")
    prof, ref = FE.selection_profiles("full", "synthetic"), FE.referee_by_family("full", "synthetic")
    assert sorted(prof) == res["budgets"]
    for b, arms in prof.items():
        assert list(arms) == list(FE.ARMS)
        for arm, p in arms.items():
            assert p["n"] == b == len(p["ids"]) and p["value"] == res["arms"]["synthetic"][str(b)][arm]["mean"]
            assert sum(p["family_counts"].values()) == len(p["ids"])  # seed seeds[0] for random
    means = [v["mean"] for v in ref.values()]
    assert means == sorted(means, reverse=True)
    assert sum(v["n"] for v in ref.values()) == len(FE.A.load("full", "synthetic")["mats"]["gt_sgd_all"].candidate_ids)


def test_exact_match_summary_follows_the_recorded_models():
    import json

    from icp_influence.experiments import finetune_equivalence as FE
    from icp_influence.paths import results_dir

    em = FE.exact_match("full", "synthetic")
    rows = [json.loads(l) for l in (results_dir() / "finetune-equivalence-full" / "runs.jsonl").read_text().splitlines()
            if l.strip()]
    rows = [r for r in rows if r["pool"] == "synthetic" and not r.get("pilot")]
    base = next(r for r in rows if r["arm"] == "base")
    assert em["base"] == base["exact_match"] and em["n_heldout"] == base["n"] == 56
    for b, arms in em["arms"].items():
        for arm, v in arms.items():
            seeds = sorted((r["seed"], r["exact_match"]) for r in rows if str(r["budget"]) == b and r["arm"] == arm)
            assert v["seeds"] == [x for _, x in seeds] and len(seeds) == 5
            assert v["mean"] == pytest.approx(np.mean(v["seeds"]))
            # every rate is a whole number of the 56 held-out answers
            assert all(abs(x * 56 - round(x * 56)) < 1e-9 for x in v["seeds"])
    assert FE.exact_match("full", "no such pool") == {}
