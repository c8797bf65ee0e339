"""The agreement verdict in words, computed from the numbers of a summary (notebook 05, the
confounds report): readable names, the strength rule (|ρ| < 0.3 weak, < 0.6 moderate, else
strong), directions from intervals, and the paragraphs built from them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PAPER_SPEARMAN = 0.73  # the authors' released Alpaca scores: Spearman(ICP win-rate, mean IP) (Pythia-1b, 52,002 × 100)
#: Readable names of the valuators and ground truths for the text (the course's figure labels say the same).
NAMES = {"icp_mean_delta": "ICP mean Δ", "icp_win_rate": "ICP win-rate", "icp_per_token": "ICP per-token Δ",
         "icp_win_rate_neutral": "ICP win-rate (neutral baseline)",
         "ip": "inner product", "ip_per_token": "inner product ÷ candidate tokens", "cosine": "cosine",
         "ekfac": "EK-FAC", "gt_sgd_small": "one small SGD step on the q/v weights",
         "gt_sgd_all": "one SGD step on all weights", "gt_adam_sign": "one Adam step (β₁ = β₂ = 0)"}


def name_of(key: str) -> str:
    """The readable name of a valuator or ground truth (the key itself when unknown)."""
    return NAMES.get(key, key)


def strength(rho: float) -> str:
    a = abs(rho)
    return "weak" if a < 0.3 else ("moderate" if a < 0.6 else "strong")


def direction(ci: list[float]) -> str:
    """``agree`` (CI above 0), ``disagree`` (below 0) or ``no detectable agreement``."""
    return "agree" if ci[0] > 0 else ("disagree" if ci[1] < 0 else "no detectable agreement")


def claims(summary: dict[str, Any], gt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The claims notebook 05 states, as values a test can check against the cached results."""
    ag = summary["agreement"]
    rel = summary["reliability"]
    md, wr = ag["icp_mean_delta vs ip"], ag["icp_win_rate vs ip"]
    out: dict[str, Any] = {
        "mean_delta_vs_ip": direction(md["ci"]),
        "win_rate_vs_ip": direction(wr["ci"]),
        "mean_delta_more_reliable_than_win_rate": rel["icp_mean_delta"]["value"] > rel["icp_win_rate"]["value"],
        "mean_delta_agrees_more_than_win_rate": md["spearman"] > wr["spearman"],
        "paper_value_inside_win_rate_ci": wr["ci"][0] <= PAPER_SPEARMAN <= wr["ci"][1],
        "biggest_mover": summary["biggest_mover"],
    }
    dom = {r["name"]: r for r in summary["ablations"] if r["group"] == "domain"}
    if len(dom) == 2:
        vals = list(dom.values())
        out["in_domain_higher"] = vals[0]["spearman"] > vals[1]["spearman"]
    if "synthetic" in summary:
        out["synthetic_mean_delta_vs_ip"] = direction(summary["synthetic"]["agreement"]["icp_mean_delta vs ip"]["ci"])
    if gt is not None:
        out["first_order_holds"] = gt["first_order"]["pair_spearman_ip"] >= 0.99
        cand = [r for r in gt["table"] if r["level"] == "candidate" and r["pool"] == "instructions"
                and r["ground_truth"] != "gt_sgd_small"]
        if cand:  # among the rows of the ground truth scored on the most candidates (the narrowest intervals)
            most = max(r["n_candidates"] for r in cand)
            best = max((r for r in cand if r["n_candidates"] == most), key=lambda r: r["spearman"])
            out["best_tracker_of_training"] = (best["valuator"], best["ground_truth"])
    return out


def _ci(v, d=2):
    return f"{v['spearman']:.{d}f} [{v['ci'][0]:.{d}f}, {v['ci'][1]:.{d}f}]"


def referee_lines(summary: dict[str, Any], gt: dict[str, Any] | None) -> list[str]:
    """The referee's bullets of the verdict (empty without a ground-truth run), in readable names."""
    if gt is None:
        return []
    c = claims(summary, gt)
    ci = _ci
    fo = gt["first_order"]
    holds = "reproduces" if c["first_order_holds"] else "does **not** reproduce (goal: Spearman ≥ 0.99)"
    lines = [f"- The referee: one small SGD step {holds} the inner product pair by pair (Spearman "
             f"{fo['pair_spearman_ip']:.4f}, η = {fo['eta']:.2g}, {fo['n_candidates']} candidates × "
             f"{fo['n_probes']} probes)."]
    if "best_tracker_of_training" in c:
        v, g = c["best_tracker_of_training"]
        row = next(r for r in gt["table"] if r["valuator"] == v and r["ground_truth"] == g
                   and r["level"] == "candidate" and r["pool"] == "instructions")
        others = [r for r in gt["table"] if r["ground_truth"] == g and r["level"] == "candidate"
                  and r["pool"] == "instructions" and r["valuator"] != v]
        lines.append(f"- What tracks a real training step best at the candidate level ({name_of(g)}, "
                     f"{row['n_candidates']} candidates × {row['n_probes']} probes): {name_of(v)}, Spearman {ci(row)}; "
                     + ", ".join(f"{name_of(r['valuator'])} {ci(r)}" for r in others) + ".")
    icp_rows = [r for r in gt["table"] if r["valuator"] == "icp_mean_delta" and r["level"] == "candidate"
                and r["pool"] == "instructions"]
    if icp_rows:
        lines.append("- ICP against real training steps (candidate level): "
                     + "; ".join(f"{name_of(r['ground_truth'])} {ci(r)}, "
                                 + ("not detected (interval includes 0)" if r["ci"][0] <= 0 <= r["ci"][1]
                                    else strength(r["spearman"])) for r in icp_rows)
                     + f". The closest ICP comes to a real step is {max(r['spearman'] for r in icp_rows):.2f}, "
                       f"{strength(max(r['spearman'] for r in icp_rows))}.")
    return lines


def noise_verdict(summary: dict[str, Any], n_corrupted: dict[str, int]) -> str:
    """What section 7's noise AUCs support, by their intervals: which valuators flag corrupted
    candidates better than chance (interval above 0.5), which cannot be told from chance, and
    whether the kinds of corruption can be told apart. ``n_corrupted``: corrupted candidates per kind."""
    auc, ci = summary["auc_noise"], summary.get("auc_noise_ci") or {}
    names = [n for n in auc if "any" in auc[n] and "any" in ci.get(n, {})]
    if not names:
        return "The noise AUCs have no intervals in this result; re-run the summary to read them."

    def iv(n, k="any"):
        lo, hi = ci[n][k]
        return f"{auc[n][k]:.2f} [{lo:.2f}, {hi:.2f}]"

    above = [n for n in names if ci[n]["any"][0] > 0.5]
    below = [n for n in names if ci[n]["any"][1] < 0.5]
    chance = [n for n in names if n not in above and n not in below]
    total = sum(n_corrupted.values())
    s = (f"**What the noise AUCs support** ({total} corrupted candidates: "
         + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in n_corrupted.items()) + "; 95% intervals, candidates resampled). ")
    if above:
        s += "Better than chance at flagging any corruption: " + "; ".join(f"{name_of(n)} {iv(n)}" for n in above) + ". "
    if chance:
        s += "Not distinguishable from chance: " + "; ".join(f"{name_of(n)} {iv(n)}" for n in chance) + ". "
    if below:
        s += "Corrupted candidates valued *higher*: " + "; ".join(f"{name_of(n)} {iv(n)}" for n in below) + ". "
    icp = [n for n in names if n.startswith("icp_")]
    grad = [n for n in names if not n.startswith("icp_")]
    grad_above = [n for n in grad if n in above]
    if icp and all(n in chance for n in icp) and grad_above:
        apart = not any(ci[i]["any"][1] >= ci[g]["any"][0] for i in icp for g in grad_above)
        s += ("ICP's AUCs cannot be told from chance and the gradient scores' can: what the 'format' explanation "
              "predicts for ICP" + (", and every ICP interval lies below those of the gradient scores. " if apart else
                                    ", though ICP's and the gradient scores' intervals overlap, so the difference "
                                    "between them is not established. "))
    elif icp and any(n in above for n in icp):
        s += "ICP flags wrong answers better than chance too: the 'format' explanation does not hold in full here. "
    # can the kinds be told apart? Only where some valuator's per-kind intervals do not overlap
    kinds = [k for k in n_corrupted if all(k in ci.get(n, {}) for n in names)]
    separated = [n for n in names if any(ci[n][a][1] < ci[n][b][0] for a in kinds for b in kinds if a != b)]
    if kinds:
        lo_n, hi_n = min(n_corrupted[k] for k in kinds), max(n_corrupted[k] for k in kinds)
        half = float(np.median([(ci[n][k][1] - ci[n][k][0]) / 2 for n in names for k in kinds]))
        s += (f"By kind ({lo_n if lo_n == hi_n else f'{lo_n}–{hi_n}'} corrupted candidates each; the per-kind intervals' "
              f"median half-width is {half:.2f}): ")
        if not separated:
            s += ("no valuator's per-kind intervals separate, so the differences between kinds in the figure are not "
                  "established by these data.")
        elif len(separated) == len(names):
            s += "every valuator separates some kinds with intervals that do not overlap."
        else:
            who = [name_of(n) for n in separated]
            s += ("only " + (who[0] + " separates" if len(who) == 1 else ", ".join(who[:-1]) + " and " + who[-1]
                             + " separate") + " some kinds with intervals that do not overlap; the other differences "
                  "between kinds are not established.")
    return s.strip()


def verdict(summary: dict[str, Any], gt: dict[str, Any] | None = None) -> str:
    """A Markdown paragraph built from the numbers (nothing typed by hand)."""
    ci = _ci

    ag, rel = summary["agreement"], summary["reliability"]
    md, wr = ag["icp_mean_delta vs ip"], ag["icp_win_rate vs ip"]
    c = claims(summary, gt)
    lines = [
        f"- **ICP mean Δ vs the inner product** on {summary['n_candidates']} candidates × {summary['n_probes']} probes: "
        f"{c['mean_delta_vs_ip']} — Spearman {ci(md)} (two-way 95% CI), a {strength(md['spearman'])} correlation; "
        f"corrected for attenuation {md['disattenuated']:.2f} [{md['disattenuated_ci'][0]:.2f}, {md['disattenuated_ci'][1]:.2f}].",
        f"- **ICP win-rate vs the inner product** (the paper's score): {c['win_rate_vs_ip']} — Spearman {ci(wr)}; the paper's "
        f"{PAPER_SPEARMAN} on Alpaca with Pythia-1b is {'inside' if c['paper_value_inside_win_rate_ci'] else 'outside'} this interval.",
        f"- Reliability across probes: ICP mean Δ {rel['icp_mean_delta']['value']:.2f}, win-rate "
        f"{rel['icp_win_rate']['value']:.2f}, inner product {rel['ip']['value']:.2f}.",
        f"- The single change with the largest point change in agreement: {summary['biggest_mover']}.",
    ]
    if "synthetic" in summary:
        s = summary["synthetic"]["agreement"]["icp_mean_delta vs ip"]
        lines.append(f"- On the synthetic task families the same design gives Spearman(ICP mean Δ, IP) {ci(s)}: "
                     f"{c['synthetic_mean_delta_vs_ip']}.")
    lines += referee_lines(summary, gt)
    return "\n".join(lines)
