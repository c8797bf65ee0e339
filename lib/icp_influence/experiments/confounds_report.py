"""What notebook 05 says, computed from the confounds result: the facts, then the words.

* :func:`claims` — every fact the notebook's text states, as values a test can check
  against the cached results (a stage not yet run is the string ``"pending"``);
* :func:`verdict` — the verdict, a Markdown paragraph per question, from those facts;
* :func:`summary` — the Summary bullets, from the same facts.

The numbers come from :mod:`icp_influence.experiments.confounds` (the analysis) and the
agreement run's summary; nothing here computes a statistic beyond reading an interval.
Words follow :func:`llm_agreement.strength` (|ρ| < 0.3 weak, < 0.6 moderate, else strong).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import agreement_words as W
from .confounds import NULL_NAMES, PAIRS, WIDE_LOG_TOKEN_SD, name_of

#: What each whole-pool ablation changes in the paper's setup (the text says which choice moved the agreement).
ABLATION_KINDS = {"ip_last2": "gradients", "ip_linear": "gradients", "psl": "score", "ekfac": "hessian",
                  "icp_chat": "template"}
#: Each kind in words, as the subject of "… moves the agreement".
LEVER_WORDS = {"other": "the changed setting",
               "gradients": "which gradients the inner product uses", "score": "the form of the gradient score",
               "hessian": "preconditioning the inner product with the Hessian (EK-FAC)",
               "template": "the prompt template of ICP"}


#: The methods of :func:`length_controlled_table`, in words.
METHOD_NAMES = {"raw": "raw", "partial": "partial, given answer tokens", "stratified": "within length quintiles",
                "per_token": "per-token forms", "ip_per_candidate_token": "inner product ÷ candidate tokens"}
#: The valuators of the paper, in the order the text names them.
PAPER_VALUATORS = ("icp_mean_delta", "icp_win_rate", "ip", "cosine")
#: The interventional stages (present once the variant pool has been scored).
INTERVENTION_KEYS = ("intervention", "variant_pool", "dose_response", "prediction")
PENDING = "pending"


def _pair_key(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _finite(x) -> bool:
    return x is not None and np.isfinite(x)


def _iv_facts(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{spearman, ci, strength, excludes_zero}`` of one interval entry (None when missing or NaN)."""
    if not entry or not _finite(entry.get("spearman")):
        return None
    ci = [float(c) if _finite(c) else float("nan") for c in entry["ci"]]
    return {"spearman": float(entry["spearman"]), "ci": ci, "strength": W.strength(entry["spearman"]),
            "excludes_zero": bool(ci[0] > 0 or ci[1] < 0)}


def raw_agreement(res: dict[str, Any], agreement_summary: dict[str, Any] | None, pair: str) -> dict[str, Any] | None:
    """The one raw number of a pair: the agreement run's (section 2 of notebook 05) when it has the
    pair, so a comparison is reported with one number; else this analysis's raw row."""
    if agreement_summary and pair in agreement_summary.get("agreement", {}):
        e = agreement_summary["agreement"][pair]
        return {"spearman": e["spearman"], "ci": list(e["ci"])}
    return res.get("length_controlled", {}).get(pair, {}).get("raw")


def null_vs(res: dict[str, Any], null: str, valuator: str) -> dict[str, Any] | None:
    """Spearman (with its CI) of a null model and a valuator (None when not measured)."""
    return res.get("null_models", {}).get(null, {}).get("spearman_vs", {}).get(valuator)


def _slope(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return None
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _slope_txt(slope: float | None, ci: Sequence[float] | None) -> str:
    if slope is None or not _finite(slope):
        return ""
    if ci is None:
        return f" ({slope:+.2f} per unit of spread)"
    return f" ({slope:+.2f} per unit of spread [{ci[0]:+.2f}, {ci[1]:+.2f}])"


def _trend_word(slope: float | None, ci: Sequence[float] | None) -> str:
    """'rises' / 'falls' when the slope's interval excludes 0; without an interval, the sign."""
    if ci is None or slope is None:
        return _sign_word(slope)
    lo, hi = ci
    return "rises" if lo > 0 else ("falls" if hi < 0 else "shows no detectable trend")


def _sign_word(v: float | None, eps: float = 1e-12) -> str:
    if v is None:
        return "could not be computed"
    return "rises" if v > eps else ("falls" if v < -eps else "stays flat")


def claims(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts notebook 05's text states, as values a test can check against the cached results.

    Each stage that the result does not hold (listed under ``pending``, or absent) is the
    string ``"pending"``, never a guessed value. Words follow :func:`llm_agreement.strength`
    (|ρ| < 0.3 weak, < 0.6 moderate, else strong).
    """
    pending = set(res.get("pending", []))
    out: dict[str, Any] = {"rule": {"weak": "|ρ| < 0.3", "moderate": "0.3 ≤ |ρ| < 0.6", "strong": "|ρ| ≥ 0.6"},
                           "n_candidates": res.get("n_candidates"), "n_probes": res.get("n_probes"),
                           "paper_spearman": W.PAPER_SPEARMAN, "pending": sorted(pending)}
    # raw agreement of the pairs, with the null model that agrees with both valuators of the pair best
    raw, nulls_best = {}, {}
    for a, b in PAIRS:
        key = _pair_key(a, b)
        f = _iv_facts(raw_agreement(res, agreement_summary, key))
        if f is None:
            continue
        both = {}
        for n in NULL_NAMES:
            ra, rb = null_vs(res, n, a), null_vs(res, n, b)
            if ra and rb and _finite(ra["spearman"]) and _finite(rb["spearman"]):
                both[n] = min(ra["spearman"], rb["spearman"])
        if both:
            best = max(both, key=both.get)
            f["best_null"] = best
            f["best_null_with_both"] = both[best]
            f["no_better_than_null"] = bool(f["spearman"] <= both[best])
            weaker = min((null_vs(res, best, a), null_vs(res, best, b)), key=lambda e: e["spearman"])
            f["best_null_ci"] = list(weaker["ci"])
            f["best_null_overlaps"] = _overlap(weaker["ci"], f["ci"])
            given = ((res.get("null_controlled") or {}).get(key) or {}).get(best)
            if given:
                f["given_best_null"] = _iv_facts(given)
        raw[key] = f
    out["raw"] = raw
    # the null model each paper valuator correlates with most (by |ρ|)
    for v in PAPER_VALUATORS:
        cand = {n: null_vs(res, n, v) for n in NULL_NAMES}
        cand = {n: e for n, e in cand.items() if e and _finite(e["spearman"])}
        if cand:
            n = max(cand, key=lambda k: abs(cand[k]["spearman"]))
            nulls_best[v] = {"null": n, **_iv_facts(cand[n])}
    out["closest_null"] = nulls_best
    # length: each valuator's correlation with answer tokens, and does IP follow length more than ICP?
    out["length_correlation"] = {v: _iv_facts(null_vs(res, "answer_length", v))
                                 for v in (*PAPER_VALUATORS, "icp_per_token", "ip_per_candidate_token")
                                 if null_vs(res, "answer_length", v)}
    md = raw.get(_pair_key("icp_mean_delta", "ip"))
    ipl = out["length_correlation"].get("ip")
    if md and ipl:
        out["ip_follows_length_more_than_icp"] = bool(ipl["spearman"] > md["spearman"])
    # length-controlled agreement
    if "length_controlled" in res:
        lc = {}
        for key, row in res["length_controlled"].items():
            r = _iv_facts(raw_agreement(res, agreement_summary, key)) or _iv_facts(row.get("raw"))
            facts = {m: _iv_facts(row.get(m)) for m in ("partial", "stratified", "per_token", "ip_per_candidate_token")
                     if row.get(m)}
            facts["raw"] = r
            for m in ("partial", "stratified", "per_token"):
                if facts.get(m) and r:
                    facts[f"{m}_below_raw"] = bool(facts[m]["spearman"] < r["spearman"])
                    facts[f"{m}_overlaps_raw"] = _overlap(facts[m]["ci"], r["ci"])
            lc[key] = facts
        out["length_controlled"] = lc
    else:
        out["length_controlled"] = PENDING
    if "pair_level" in res:
        pl = res["pair_level"]["raw"]
        out["pair_level"] = {"mean": pl["mean"], "ci": pl["ci"], "strength": W.strength(pl["mean"]),
                             "excludes_zero": bool(pl["ci"][0] > 0 or pl["ci"][1] < 0),
                             "fraction_positive": pl["fraction_positive"], "n_probes": pl["n_probes"]}
    else:
        out["pair_level"] = PENDING
    out["log_token_sd"] = res.get("log_token_sd")
    # examples or kinds of example: agreement within task categories and between their means
    if "category_structure" in res:
        cs = {}
        for pool, t in res["category_structure"].items():
            row = t.get(_pair_key("icp_mean_delta", "ip"))
            if not row:
                continue
            f = {m: _iv_facts(row[m]) for m in ("raw", "within_groups", "between_groups") if row.get(m)}
            f["n_categories"] = t["n_categories"]
            f["between_above_within"] = bool(f["between_groups"]["spearman"] > f["within_groups"]["spearman"])
            f["intervals_overlap"] = _overlap(f["between_groups"]["ci"], f["within_groups"]["ci"])
            cs[pool] = f
        out["category_structure"] = cs
    else:
        out["category_structure"] = PENDING
    # the intervention
    if "intervention" in res and "intervention" not in pending:
        eff = {}
        for v, e in res["intervention"].items():
            lo, hi = e["rank_ci"]
            eff[v] = {"rank_effect": e["rank_effect"], "rank_ci": [lo, hi], "effect": e["effect"], "ci": e["ci"],
                      "fraction_long_higher": e["fraction_long_higher"], "n_instructions": e["n_instructions"],
                      "direction": "longer ranks higher" if _finite(lo) and lo > 0 else
                      ("longer ranks lower" if _finite(hi) and hi < 0 else "no detectable effect")}
        out["intervention"] = eff
    else:
        out["intervention"] = PENDING
    if "dose_response" in res and "dose_response" not in pending:
        dr = res["dose_response"]
        sd = [row["log_token_sd"] for row in dr]
        sl_raw = _slope(sd, [row["raw"]["spearman"] for row in dr])
        sl_par = _slope(sd, [row["partial"]["spearman"] for row in dr])
        trend = (res.get("prediction") or {}).get("slope", {})
        out["dose_response"] = {"slope_raw": sl_raw, "slope_partial": sl_par,
                                "raw": _trend_word(sl_raw, (trend.get("raw") or {}).get("ci")),
                                "partial": _trend_word(sl_par, (trend.get("partial") or {}).get("ci")),
                                "slope_raw_ci": (trend.get("raw") or {}).get("ci"),
                                "slope_partial_ci": (trend.get("partial") or {}).get("ci"),
                                "sd_range": [min(sd), max(sd)], "n_levels": len(dr)}
    else:
        out["dose_response"] = PENDING
    if "prediction" in res and "prediction" not in pending:
        pr = res["prediction"]
        pred = {}
        for m in ("raw", "partial"):
            e = pr.get(m) or {}
            if not _finite(e.get("spearman")):
                pred[m] = None
                continue
            lo, hi = e["ci"]
            where = ("inside" if _finite(lo) and _finite(hi) and lo <= W.PAPER_SPEARMAN <= hi else
                     ("above" if _finite(hi) and W.PAPER_SPEARMAN > hi else
                      "below" if _finite(lo) and W.PAPER_SPEARMAN < lo else "undetermined"))
            pred[m] = {"spearman": e["spearman"], "ci": [lo, hi], "strength": W.strength(e["spearman"]),
                       "paper_relative_to_ci": where}
        # the variant pool is scored on fewer probes than the run: its agreement is attenuated by
        # probe noise; the run's measured reliability at that probe count gives the factor
        k = (res.get("variant_pool") or {}).get("n_probes")
        curves = (agreement_summary or {}).get("reliability_curves", {})
        rel_k = {n: dict(zip(c["k"], c["reliability"])).get(k) for n, c in curves.items()} if k else {}
        if pred.get("raw") and rel_k.get("icp_mean_delta") and rel_k.get("ip"):
            f = float(np.sqrt(rel_k["icp_mean_delta"] * rel_k["ip"]))
            lo, hi = pred["raw"]["ci"]
            pred["attenuation"] = {"n_probes": k, "reliability_icp": rel_k["icp_mean_delta"], "reliability_ip": rel_k["ip"],
                                   "factor": f, "corrected": min(1.0, pred["raw"]["spearman"] / f),
                                   "corrected_ci": [min(1.0, lo / f), min(1.0, hi / f)]}
            c_lo, c_hi = pred["attenuation"]["corrected_ci"]
            pred["attenuation"]["paper_relative_to_corrected_ci"] = (
                "inside" if c_lo <= W.PAPER_SPEARMAN <= c_hi else ("above" if W.PAPER_SPEARMAN > c_hi else "below"))
        pred["log_token_sd"] = pr["log_token_sd"]
        pred["extrapolates_by"] = pr.get("extrapolates_by", 0.0)
        pred["max_log_token_sd_reached"] = pr.get("max_log_token_sd_reached")
        out["prediction"] = pred
    else:
        out["prediction"] = PENDING
    out["ablations"] = res["ablations"] if "ablations" in res and "ablations" not in pending else PENDING
    out["ablations_pending"] = list(res.get("ablations_pending", []))
    # the ablations whose paired difference from the reference has an interval above 0, and the largest of them
    rows = out["ablations"] if out["ablations"] != PENDING else []
    higher = [r for r in rows if _above_reference(r)]
    out["ablations_above_reference"] = [r["ablation"] for r in higher]
    out["ablations_below_reference"] = [r["ablation"] for r in rows if _below_reference(r)]
    best = max(higher, key=lambda r: r["spearman"]) if higher else None
    out["ablation_lever"] = ({**best, "kind": ABLATION_KINDS.get(best["ablation"], "other")} if best else None)
    # can the changes above the reference be ranked? Only if the largest one's paired interval clears the others'
    out["levers_overlap"] = bool(best and any(_overlap(best["difference_from_reference"]["ci"],
                                                      r["difference_from_reference"]["ci"])
                                              for r in higher if r is not best))
    out["all_ablations_above_reference"] = bool(rows) and len(higher) == len(rows)
    lc = out["length_controlled"]
    ref_partial = (lc.get(_pair_key("icp_mean_delta", "ip")) or {}).get("partial") if lc != PENDING else None
    out["reference_partial"] = ref_partial["spearman"] if ref_partial else None
    return out


def _levers_sentence(c: dict[str, Any], *, start: bool = True, say_all: bool = True) -> str:
    """What the ablations above the reference say together, by their paired intervals."""
    if c["levers_overlap"]:
        txt = (("every whole-pool change that was run raises the agreement, and the"
                if c["all_ablations_above_reference"] and say_all else "the")
               + " paired differences' intervals overlap, so these data do not rank the changes.")
    else:
        txt = f"{LEVER_WORDS[c['ablation_lever']['kind']]} moves it most (its paired interval clears the others')."
    return txt[0].upper() + txt[1:] if start else txt


def _above_reference(row: dict[str, Any]) -> bool:
    ci = (row.get("difference_from_reference") or {}).get("ci")
    return bool(ci and _finite(ci[0]) and ci[0] > 0)


def _below_reference(row: dict[str, Any]) -> bool:
    ci = (row.get("difference_from_reference") or {}).get("ci")
    return bool(ci and _finite(ci[1]) and ci[1] < 0)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two intervals ``[lo, hi]`` overlap (then the data cannot tell the two values apart)."""
    return bool(_finite(a[0]) and _finite(a[1]) and _finite(b[0]) and _finite(b[1]) and a[0] <= b[1] and b[0] <= a[1])


def _fmt_iv(e: dict[str, Any], d: int = 2) -> str:
    lo, hi = e["ci"]
    return f"{e['spearman']:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _zero(e: dict[str, Any]) -> str:
    lo, hi = e["ci"]
    if e["excludes_zero"] and min(abs(lo), abs(hi)) < 0.005:
        return f"its interval only just excludes 0: it ends at {lo if abs(lo) < abs(hi) else hi:.3f}"
    return "its interval excludes 0" if e["excludes_zero"] else "its interval includes 0"


def _pct_points(e: dict[str, Any]) -> str:
    lo, hi = e["rank_ci"]
    return f"{e['rank_effect']:+.0f} percentile points [{lo:+.0f}, {hi:+.0f}]"


def verdict(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> str:
    """Notebook 05's verdict: a Markdown paragraph per question, every number from the results,
    in plain words (:data:`NAMES`); a stage not yet run is said to be pending."""
    c = claims(res, agreement_summary)
    n = name_of
    md = c["raw"].get(_pair_key("icp_mean_delta", "ip"))
    wr = c["raw"].get(_pair_key("icp_win_rate", "ip"))
    if md is None:
        return "The agreement of ICP mean Δ and the inner product has not been measured yet (pending)."
    parts = []
    s = (f"**What agrees with what.** On {c['n_candidates']} candidates × {c['n_probes']} probes, ICP mean Δ and the "
         f"inner product agree **{md['strength']}ly**: Spearman {_fmt_iv(md)} (two-way 95% interval; {_zero(md)}).")
    if wr:
        s += (f" The paper's score, the ICP win-rate, gives {_fmt_iv(wr)} with the inner product — "
              f"{'also ' if wr['strength'] == md['strength'] else ''}{wr['strength']} ({_zero(wr)}).")
    s += " Words follow one rule: |ρ| below 0.3 is weak, below 0.6 moderate, above that strong."
    parts.append(s)
    L = c["length_correlation"]
    if "ip" in L and "icp_mean_delta" in L:
        ip_null = c["closest_null"].get("ip")
        s = (f"**The length confound.** The inner product follows the length of the candidate's answer "
             f"({_fmt_iv(L['ip'])}, {L['ip']['strength']}) "
             + ("more closely than it follows ICP" if c.get("ip_follows_length_more_than_icp") else
                "less closely than it follows ICP")
             + f" ({md['spearman']:.2f}); ICP mean Δ follows length {L['icp_mean_delta']['strength']}ly at most "
             f"({_fmt_iv(L['icp_mean_delta'])}; {_zero(L['icp_mean_delta'])}).")
        if ip_null and ip_null["null"] != "answer_length":
            s += (f" Of the null models, {n(ip_null['null'])} correlates most with the inner product "
                  f"({ip_null['spearman']:.2f})")
            via = null_vs(res, ip_null["null"], "answer_length")
            s += (f", and it grows with length itself (Spearman with answer tokens {via['spearman']:.2f})."
                  if via and _finite(via["spearman"]) else ".")
        if "ip_per_candidate_token" in L:
            s += (f" Divide the inner product by the candidate's answer tokens and its correlation with length becomes "
                  f"{L['ip_per_candidate_token']['spearman']:.2f}.")
        if "best_null" in md:
            if md["no_better_than_null"]:
                s += (f" ICP and the inner product agree **no better than a null model does with both**: "
                      f"{n(md['best_null'])} correlates at least {md['best_null_with_both']:.2f} with each, "
                      f"against their {md['spearman']:.2f} with each other.")
            elif md.get("best_null_overlaps"):
                lo, hi = md["best_null_ci"]
                s += (f" The best null model, {n(md['best_null'])}, reaches {md['best_null_with_both']:.2f} "
                      f"[{lo:.2f}, {hi:.2f}] with the one of the two it agrees with less: below their "
                      f"{md['spearman']:.2f} with each other as a point, with overlapping intervals.")
                g = md.get("given_best_null")
                if g:
                    s += (f" Overlap is not a test; partialling that null model out is: given {n(md['best_null'])}, the pair "
                          f"agrees at {_fmt_iv(g)} ({_zero(g)}), so "
                          + ("they share something beyond it." if g["excludes_zero"] else
                             "these data cannot show that they share anything beyond it."))
            else:
                s += (f" No null model does as well with both: the best, {n(md['best_null'])}, reaches "
                      f"{md['best_null_with_both']:.2f} with the one of the two it agrees with less, below their "
                      f"{md['spearman']:.2f} with each other, and the intervals do not overlap.")
        parts.append(s)
    lc = c["length_controlled"]
    if lc == PENDING:
        parts.append("**What remains after control** is pending: the length-controlled analysis has not been run.")
    else:
        row = lc.get(_pair_key("icp_mean_delta", "ip"), {})
        bits = []
        for m in ("partial", "stratified", "per_token"):
            if row.get(m):
                bits.append(f"{METHOD_NAMES[m]} {_fmt_iv(row[m])} ({row[m]['strength']}; {_zero(row[m])})")
        s = "**What remains after control.** ICP mean Δ vs the inner product: " + "; ".join(bits) + "."
        lower = [METHOD_NAMES[m] for m in ("partial", "stratified", "per_token") if row.get(f"{m}_below_raw")]
        if lower:
            s += f" Every control that was run lowers the point estimate below the raw {md['spearman']:.2f}" \
                if len(lower) == len([m for m in ("partial", "stratified", "per_token") if row.get(m)]) else \
                f" Controls that lower the point estimate below the raw {md['spearman']:.2f}: {', '.join(lower)}"
            overl = [m for m in ("partial", "stratified", "per_token") if row.get(f"{m}_overlaps_raw")]
            s += ("; every interval still overlaps the raw one, so the drop itself is not established by these "
                  "data alone" if len(overl) == len([m for m in ("partial", "stratified", "per_token") if row.get(m)])
                  else "")
            s += "."
        wrow = lc.get(_pair_key("icp_win_rate", "ip"), {})
        if wrow.get("partial"):
            s += (f" For the win-rate the partial agreement is {_fmt_iv(wrow['partial'])} ({_zero(wrow['partial'])})"
                  + (f" and the per-token forms give {_fmt_iv(wrow['per_token'])}" if wrow.get("per_token") else "")
                  + ".")
        pl = c["pair_level"]
        if pl != PENDING:
            s += (f" Pair by pair — what the first-order theory predicts — the Spearman of Δ and the inner product "
                  f"across candidates, probe by probe, averages {pl['mean']:.2f} [{pl['ci'][0]:.2f}, {pl['ci'][1]:.2f}] "
                  f"over {pl['n_probes']} probes ({pl['strength']}; {_zero(pl)}), positive for "
                  f"{pl['fraction_positive']:.0%} of them.")
        parts.append(s)
    cs = c["category_structure"]
    if cs != PENDING and cs:
        bits = []
        for pool in ("instructions", "synthetic"):
            f = cs.get(pool)
            if not f:
                continue
            what = "the instruction set" if pool == "instructions" else "the synthetic task families"
            bits.append(f"on {what} ({f['n_categories']} categories; raw {f['raw']['spearman']:.2f}) ICP mean Δ and the "
                        f"inner product agree {f['within_groups']['strength']}ly about which example is better "
                        f"**within** a category ({_fmt_iv(f['within_groups'])}; {_zero(f['within_groups'])}) and "
                        f"{f['between_groups']['strength']}ly about which **category** is better "
                        f"({_fmt_iv(f['between_groups'])}; {_zero(f['between_groups'])})")
        s = "**Examples or kinds of example?** Split each agreement into its two parts: " + "; ".join(bits) + "."
        if all(f["between_above_within"] for f in cs.values()):
            overl = [("the instruction set" if p == "instructions" else "the synthetic families")
                     for p, f in cs.items() if f["intervals_overlap"]]
            if overl:
                s += (" In both pools the between-category point estimate is the larger, but on " + " and ".join(overl)
                      + " the two intervals overlap: there the split is suggestive, not established.")
            else:
                s += (" In both pools the between-category agreement is the larger, with intervals that do not overlap: "
                      "what the two valuators share is more about which kind of example helps than about which example "
                      "of that kind does.")
        syn = cs.get("synthetic")
        if syn and not syn["within_groups"]["excludes_zero"] and syn["between_groups"]["excludes_zero"]:
            s += (f" On the synthetic families, whose answers are a few tokens long, the within-family agreement is not "
                  f"detected ({_fmt_iv(syn['within_groups'])}): the agreement there ({syn['raw']['spearman']:.2f}) lies "
                  "between families.")
        parts.append(s)
    ab = c["ablations"]
    if ab != PENDING and ab:
        bits = []
        for r in ab:
            e = {"spearman": r["spearman"], "ci": r["ci"]}
            t = (f"{n(r['ablation'])}: {_fmt_iv(e)} ({W.strength(r['spearman'])}), given length "
                 f"{_fmt_iv(r['partial'])}")
            dif = r.get("difference_from_reference")
            if dif and _finite(dif.get("spearman")):
                lo, hi = dif["ci"]
                t += (f", {dif['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}] against the reference "
                      + (("(higher; the interval only just excludes 0)" if lo < 0.01 else "(higher)") if lo > 0 else
                         ("(lower; the interval only just excludes 0)" if hi > -0.01 else "(lower)") if hi < 0 else
                         "(no detectable difference)"))
            bits.append(t)
        s = (f"**Which choices of the setup?** The same candidates and probes with one choice changed (the gradients, "
             f"the form of the score, the Hessian, or ICP's prompt template), each against ICP mean Δ (the chat template's "
             f"ICP against the inner product; reference: ICP mean Δ vs the inner product over the q/v weights of every "
             f"block, {md['spearman']:.2f}): " + "; ".join(bits) + ".")
        best = c["ablation_lever"]
        if best:
            s += (f" The largest point estimate, {n(best['ablation'])}, agrees {W.strength(best['spearman'])}ly "
                  f"({best['spearman']:.2f}), {best['difference_from_reference']['spearman']:+.2f} above the reference with "
                  f"an interval above 0, and {_fmt_iv(best['partial'])} given length"
                  + (f" (the reference given length: {c['reference_partial']:.2f})" if _finite(c["reference_partial"])
                     else "") + ". " + _levers_sentence(c))
        if c.get("ablations_pending"):
            s += " Not run on the whole pool yet: " + ", ".join(n(a) for a in c["ablations_pending"]) + "."
        parts.append(s)
    iv = c["intervention"]
    if iv == PENDING:
        parts.append("**The intervention** (the same instructions with short and long correct answers) is pending: "
                     "it has not been run, so the causal part of the length story is not yet measured; the text "
                     "above rests on correlations.")
    else:
        say = {"longer ranks higher": "ranks the long version higher", "longer ranks lower": "ranks the long version lower",
               "no detectable effect": "shows no detectable effect"}
        bits = [f"the {n(v)} {say[iv[v]['direction']]} ({_pct_points(iv[v])}, long above short for "
                f"{iv[v]['fraction_long_higher']:.0%} of instructions)"
                for v in ("ip", "icp_mean_delta", "icp_win_rate") if v in iv]
        k = next(iter(iv.values()))["n_instructions"]
        parts.append(f"**The intervention.** With the instruction fixed ({k} instructions, each answered correctly both briefly "
                     f"and at length), a longer answer moves each valuator's rank as follows: " + "; ".join(bits) + ". This "
                     "shows that length raises each score; whether it is what the two scores share is the question of the "
                     "controls above and of the spread below.")
    pr, dr = c["prediction"], c["dose_response"]
    sd = c.get("log_token_sd")
    sd_txt = f"{sd:.2f}" if _finite(sd) else "unknown"
    if pr == PENDING or dr == PENDING:
        less = "less" if _finite(sd) and sd < WIDE_LOG_TOKEN_SD else "no less"
        parts.append(f"**The paper's {W.PAPER_SPEARMAN}.** This pool's answers vary {less} in length than the paper's (standard "
                     f"deviation of log answer tokens {sd_txt}; the analysis takes {WIDE_LOG_TOKEN_SD}, the spread of a pool that, "
                     f"like the paper's Alpaca, spans about 4 to 500 answer tokens). Whether a pool as wide would reach {W.PAPER_SPEARMAN} is what the "
                     f"dose–response curve answers, and it is pending.")
    else:
        s = (f"**The paper's {W.PAPER_SPEARMAN}.** This pool's standard deviation of log answer tokens is {sd_txt}. The "
             f"analysis takes {pr['log_token_sd']} for a pool that, like the paper's Alpaca, spans about 4 to 500 answer "
             f"tokens (an assumption about the paper's data: it does not report the spread). As the variant pools widen "
             f"the spread ({dr['sd_range'][0]:.2f} to {dr['sd_range'][1]:.2f}), the raw agreement "
             f"{dr['raw']}{_slope_txt(dr['slope_raw'], dr.get('slope_raw_ci'))} and the length-controlled one "
             f"{dr['partial']}{_slope_txt(dr['slope_partial'], dr.get('slope_partial_ci'))}.")
        if pr.get("raw"):
            inside = pr.get("extrapolates_by", 0) == 0
            s += (f" At a spread of {pr['log_token_sd']} ({'inside the measured range, so an interpolation' if inside else 'beyond the measured range'}) "
                  f"the raw agreement is {_fmt_iv(pr['raw'])} ({pr['raw']['strength']}); the paper's {W.PAPER_SPEARMAN} lies "
                  f"{pr['raw']['paper_relative_to_ci']} that interval")
            if pr.get("partial"):
                s += f", and given length it is {_fmt_iv(pr['partial'])}"
            s += "."
            att = pr.get("attenuation")
            if att:
                s += (f" The variant pools are scored on {att['n_probes']} probes, where this run's reliabilities are "
                      f"{att['reliability_icp']:.2f} (ICP mean Δ) and {att['reliability_ip']:.2f} (inner product): probe noise "
                      f"shrinks that agreement by a factor of about {att['factor']:.2f}. Corrected, it is about "
                      f"{att['corrected']:.2f} [{att['corrected_ci'][0]:.2f}, {att['corrected_ci'][1]:.2f}], and the paper's "
                      f"{W.PAPER_SPEARMAN} lies {att['paper_relative_to_corrected_ci']} that interval.")
        if pr.get("extrapolates_by", 0) > 0:
            s += f" (The prediction extrapolates {pr['extrapolates_by']:.2f} beyond the widest pool measured.)"
        parts.append(s)
        parts.append(_answer(c, md, agreement_summary))
    return "\n\n".join(parts)


def _answer(c: dict[str, Any], md: dict[str, Any], agreement_summary: dict[str, Any] | None) -> str:
    """The closing paragraph: what the measurements say about 0.23 here against the paper's 0.73."""
    pr, dr = c["prediction"], c["dose_response"]
    corr = ((agreement_summary or {}).get("agreement", {}).get(_pair_key("icp_mean_delta", "ip")) or {}).get("disattenuated")
    bits = [f"probe noise is not the reason (corrected for attenuation the agreement is {corr:.2f})" if _finite(corr)
            else "probe noise was not measured here"]
    reach = []
    if pr != PENDING and pr.get("raw"):
        att = pr.get("attenuation")
        reach.append(att["corrected"] if att else pr["raw"]["spearman"])
        trend = "" if dr == PENDING or dr["raw"] == "rises" else ", though its rise with the spread is not detectable with these intervals"
        txt = (f"in pools whose answer lengths vary about as widely as the paper's the raw agreement is about "
               f"{pr['raw']['spearman']:.2f}" + (f" ({att['corrected']:.2f} corrected for probe noise)" if att else "") + trend)
        if pr.get("partial"):
            txt += f", and given length it is {pr['partial']['spearman']:.2f}"
        bits.append(txt)
    best = c["ablation_lever"]
    if best:
        reach += [r["disattenuated"] if _finite(r.get("disattenuated")) else r["spearman"] for r in c["ablations"]
                  if r["ablation"] in c["ablations_above_reference"]]
        many = len(c["ablations_above_reference"]) > 1
        difs = [r["difference_from_reference"]["spearman"] for r in c["ablations"]
                if r["ablation"] in c["ablations_above_reference"]]
        bits.append((f"each of the {len(difs)} whole-pool changes that lie above the reference raises it, by "
                     f"{min(difs):+.2f} to {max(difs):+.2f}" if many else f"{LEVER_WORDS[best['kind']]} moves it")
                    + f" ({'the largest, ' if many else ''}{name_of(best['ablation'])}: {best['spearman']:.2f}, "
                    f"{best['difference_from_reference']['spearman']:+.2f} against the reference in a paired comparison"
                    + ("; the changes' intervals overlap" if c["levers_overlap"] else "") + ")")
    s = (f"**So why {md['spearman']:.2f} here and {W.PAPER_SPEARMAN} in the paper?** On this model and this data: "
         + "; ".join(bits) + ".")
    if reach and max(reach) < W.PAPER_SPEARMAN:
        att = pr.get("attenuation") if pr != PENDING else None
        s += (f" No single lever measured here reaches {W.PAPER_SPEARMAN} as a point estimate, even corrected for probe "
              f"noise (the largest is {max(reach):.2f})"
              + (", although the corrected interval of the widest pools includes it"
                 if att and att["paper_relative_to_corrected_ci"] == "inside" else "")
              + ". Not varied here: the model (the paper uses Pythia-1b, this course SmolLM2-135M), the data (Alpaca) and "
              "the paper's exact pairing (win-rate against the signed-log inner product on the paper's layers).")
        lc = c["length_controlled"]
        here = (lc.get(_pair_key("icp_mean_delta", "ip")) or {}).get("partial") if lc != PENDING else None
        if here and pr.get("partial") and pr["partial"]["spearman"] <= here["spearman"]:
            s += (f" Given length, the widest pools agree no more than this pool does ({pr['partial']['spearman']:.2f} "
                  f"against {here['spearman']:.2f}): whatever a wide length spread adds, it adds through length.")
    return s


def summary(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> str:
    """The Summary bullets of notebook 05, with their numbers."""
    c = claims(res, agreement_summary)
    md = c["raw"].get(_pair_key("icp_mean_delta", "ip"))
    lines = []
    if agreement_summary:
        rel = agreement_summary["reliability"]
        vals = [rel[k]["value"] for k in ("icp_mean_delta", "icp_win_rate", "ip")]
        lines.append(f"- Reliability first: across {agreement_summary['n_probes']} probes ICP mean Δ reaches "
                     f"{vals[0]:.2f}, the win-rate {vals[1]:.2f} and the inner product {vals[2]:.2f}"
                     + (", all at least 0.8, so probe noise is not what keeps agreement low." if min(vals) >= 0.8 else
                        "; below 0.8, probe noise lowers every agreement that follows."))
    if md:
        lines.append(f"- ICP mean Δ and the inner product agree {md['strength']}ly: Spearman {_fmt_iv(md)} on "
                     f"{c['n_candidates']} candidates"
                     + (f", well below the paper's {W.PAPER_SPEARMAN} (outside the interval)." if md["ci"][1] < W.PAPER_SPEARMAN
                        else f"; the paper's {W.PAPER_SPEARMAN} is inside the interval."))
    L = c["length_correlation"]
    if "ip" in L:
        icp = L.get("icp_mean_delta")
        lines.append(f"- The inner product follows answer length {L['ip']['strength']}ly (Spearman with answer tokens "
                     f"{L['ip']['spearman']:.2f})" + (f"; ICP mean Δ {icp['strength']}ly ({icp['spearman']:.2f})." if icp
                                                      else "."))
    lc = c["length_controlled"]
    if lc != PENDING and md:
        row = lc.get(_pair_key("icp_mean_delta", "ip"), {})
        if row.get("partial") and row.get("per_token"):
            lines.append(f"- Controlled for length the agreement is {row['partial']['strength']}: "
                         f"{row['partial']['spearman']:.2f} given answer tokens, {row['per_token']['spearman']:.2f} "
                         f"between the per-token forms ({_zero(row['per_token'])}).")
    pl = c["pair_level"]
    if pl != PENDING:
        lines.append(f"- Pair by pair, within each probe, Δ follows the inner product {pl['strength']}ly "
                     f"(mean Spearman {pl['mean']:.2f}, positive for {pl['fraction_positive']:.0%} of probes).")
    cs = c["category_structure"]
    if cs != PENDING and cs.get("instructions"):
        f = cs["instructions"]
        lines.append(("- Most of what they share is about kinds of example: between categories "
                      if f["between_above_within"] and not f["intervals_overlap"] else
                      "- Between categories they agree more than within one, as point estimates (the intervals overlap): "
                      if f["between_above_within"] else
                      "- What they share is no more about kinds of example than about examples: between categories ")
                     + f"{f['between_groups']['spearman']:.2f}, within a category {f['within_groups']['spearman']:.2f}"
                     + (f" (synthetic families: {cs['synthetic']['between_groups']['spearman']:.2f} between, "
                        f"{cs['synthetic']['within_groups']['spearman']:.2f} within)." if cs.get("synthetic") else "."))
    iv = c["intervention"]
    if iv != PENDING and "ip" in iv and "icp_mean_delta" in iv:
        both = all(iv[k]["direction"] == "longer ranks higher" for k in ("ip", "icp_mean_delta"))
        lines.append(("- A longer answer raises both scores (the same instruction, answered briefly or at length): "
                      if both else "- The intervention (the same instruction, answered briefly or at length): ")
                     + f"a longer answer moves the inner "
                     f"product's rank by {iv['ip']['rank_effect']:+.0f} percentile points "
                     f"[{iv['ip']['rank_ci'][0]:+.0f}, {iv['ip']['rank_ci'][1]:+.0f}] and ICP mean Δ's by "
                     f"{iv['icp_mean_delta']['rank_effect']:+.0f} [{iv['icp_mean_delta']['rank_ci'][0]:+.0f}, "
                     f"{iv['icp_mean_delta']['rank_ci'][1]:+.0f}].")
    best = c["ablation_lever"]
    if best:
        d = best["difference_from_reference"]
        n_run = len(c["ablations"]) if c["ablations"] != PENDING else 0
        lines.append(f"- What moves it: {len(c['ablations_above_reference'])} of the {n_run} whole-pool changes raise the "
                     f"agreement above the reference pair (ICP mean Δ vs the inner product over every block; paired "
                     f"intervals above 0). The largest point estimate is {name_of(best['ablation'])} at "
                     f"{best['spearman']:.2f} ({W.strength(best['spearman'])}), {d['spearman']:+.2f} [{d['ci'][0]:+.2f}, "
                     f"{d['ci'][1]:+.2f}], and {best['partial']['spearman']:.2f} given length"
                     + (f" (reference {c['reference_partial']:.2f})" if _finite(c["reference_partial"]) else "")
                     + f"; {_levers_sentence(c, start=False, say_all=False)}")
    pr = c["prediction"]
    if pr == PENDING:
        lines.append("- The length intervention and the prediction for a pool as wide as the paper's are pending.")
    elif pr.get("raw"):
        lines.append(f"- A pool as wide in answer length as the paper's is predicted to give "
                     f"{pr['raw']['spearman']:.2f} [{pr['raw']['ci'][0]:.2f}, {pr['raw']['ci'][1]:.2f}]; the paper's "
                     f"{W.PAPER_SPEARMAN} lies {pr['raw']['paper_relative_to_ci']} its interval"
                     + (f", and given length the prediction is {pr['partial']['spearman']:.2f} "
                        f"[{pr['partial']['ci'][0]:.2f}, {pr['partial']['ci'][1]:.2f}]"
                        + (": a wider spread of lengths raises the raw agreement, not what the two share beyond length."
                           if c["dose_response"] != PENDING and c["dose_response"]["raw"] == "rises"
                           and c["dose_response"]["partial"] != "rises" else ".")
                        if pr.get("partial") else "."))
        att = pr.get("attenuation")
        if att:
            lines.append(f"- Corrected for the probe noise of the variant pools ({att['n_probes']} probes) that is about "
                         f"{att['corrected']:.2f} [{att['corrected_ci'][0]:.2f}, {att['corrected_ci'][1]:.2f}]: no lever "
                         f"measured here reaches {W.PAPER_SPEARMAN} as a point estimate; the model, the data and the "
                         f"paper's exact valuator pair were not varied.")
    return "\n".join(lines)


