"""Fine-tune a causal LM on a selected subset and evaluate it on held-out probes (docs/design.md).

* :func:`finetune` — LoRA (``peft``; target modules chosen per architecture) or full
  fine-tuning with AdamW on the answer-only loss of
  :func:`~icp_influence.encoding.encode_example`. Seeded; the caller's model is never
  modified (a deep copy is trained).
* :func:`evaluate` — answer log-likelihood (mean per example and per token) and greedy
  exact-match accuracy (:func:`~icp_influence.lm.generate_answer`, normalised strings),
  overall and per family.
* :func:`run_arms` — several selection arms × ≥ 3 seeds; an :class:`Outcome` with
  95% t-intervals over seeds (JSON-serialisable).
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .data import Example, Pool
from .encoding import Encoded, encode_example
from .errors import ConfigError
from .lm import answer_logprobs, answer_nll, generate_answer, model_device, pad_batch
from .stats import t_interval  # noqa: F401  (re-exported: the one t-interval, in the statistics home)
from .utils import atomic_write_json

#: LoRA target modules per ``config.model_type``.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt2": ["c_attn"],
    "phi3": ["qkv_proj"],
}
METRICS = ("answer_loglik_per_token", "answer_loglik", "exact_match")


def lora_target_modules(model) -> list[str]:
    """The attention projections LoRA adapts for this architecture.

    Raises :class:`ConfigError` for an unknown architecture (pass ``target_modules``).
    """
    mt = getattr(model.config, "model_type", None)
    if mt in LORA_TARGETS:
        return list(LORA_TARGETS[mt])
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for cand in (["q_proj", "v_proj"], ["query_key_value"], ["c_attn"]):
        if set(cand) <= names:
            return cand
    raise ConfigError(
        f"No default LoRA target modules for model_type {mt!r}; pass FinetuneConfig(target_modules=[...]) "
        "naming its attention projection layers."
    )


def lora_parameter_count(model, config: "FinetuneConfig | None" = None) -> dict[str, int]:
    """How many parameters LoRA trains on ``model``: every adapted weight matrix
    (``d_out × d_in``) gets ``B`` (``d_out × r``) and ``A`` (``r × d_in``), so ``r·(d_in + d_out)``
    trainable numbers. Returns ``{"rank", "modules", "trainable", "total"}`` (``total``: the
    model's own parameters, all frozen under LoRA). Counted without building the adapters."""
    cfg = config or FinetuneConfig()
    targets = set(cfg.target_modules or lora_target_modules(model))
    trainable = modules = 0
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if name.rsplit(".", 1)[-1] in targets and w is not None and w.dim() == 2:
            trainable += cfg.lora_r * (w.shape[0] + w.shape[1])
            modules += 1
    if modules == 0:
        raise ConfigError(f"No module named {sorted(targets)} with a 2-D weight in this model.")
    return {"rank": cfg.lora_r, "modules": modules, "trainable": int(trainable),
            "total": int(sum(p.numel() for p in model.parameters()))}


def default_template(model, tokenizer=None) -> str:
    """``"chat"`` for SmolLM2 (an instruct model with a chat template), ``"paper"`` otherwise."""
    name = str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")).lower()
    if "smollm" in name and (tokenizer is None or getattr(tokenizer, "chat_template", None)):
        return "chat"
    return "paper"


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run.

    ``lr=None`` picks 1e-3 for LoRA and 2e-5 for full fine-tuning. ``max_steps`` caps the
    optimiser steps (``None``: ``epochs`` passes over the subset).
    """

    method: str = "lora"  # "lora" | "full"
    epochs: int = 3
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 0.0
    max_steps: int | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    template: str | None = None
    max_length: int | None = 256
    add_eos: bool = True
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ConfigError(f"method must be 'lora' or 'full', got {self.method!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be ≥ 1, got {self.epochs} and {self.batch_size}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be ≥ 1 or None, got {self.max_steps}.")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 2e-5)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainLog:
    steps: int
    losses: list[float]
    seconds: float


def _train_encodings(tokenizer, examples: Sequence[Example], template: str, max_length: int | None,
                     add_eos: bool) -> list[Encoded]:
    encs = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        e = encode_example(tokenizer, ex, template=template, max_length=max_length)
        if add_eos and eos is not None:
            e = Encoded(e.prefix_ids, e.query_ids, (*e.answer_ids, eos), e.truncated)
        encs.append(e)
    return encs


def finetune(model, tokenizer, train: Sequence[Example] | Pool, config: FinetuneConfig | None = None, *,
             seed: int = 0, progress: bool = False, return_log: bool = False):
    """Train a copy of ``model`` on ``train`` (answer-only loss); returns the trained copy.

    LoRA adapters are merged back into the weights, so the result is a plain model of the
    same class. The caller's ``model`` is untouched. ``progress=True`` shows a
    ``tqdm.auto`` bar over the optimiser steps (with the latest batch's loss);
    ``return_log=True`` also returns a :class:`TrainLog` (each step's loss is that step's
    batch's loss, so consecutive values differ by their examples as well as by training).
    """
    cfg = config or FinetuneConfig()
    examples = list(train)
    if not examples:
        raise ConfigError("The training subset is empty; select at least one example.")
    template = cfg.template or default_template(model, tokenizer)
    encs = _train_encodings(tokenizer, examples, template, cfg.max_length, cfg.add_eos)
    device = model_device(model)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        work = copy.deepcopy(model)
        if cfg.method == "lora":
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.target_modules or lora_target_modules(work),
                              task_type="CAUSAL_LM",
                              fan_in_fan_out=getattr(work.config, "model_type", "") == "gpt2")
            with warnings.catch_warnings():  # peft reads transformers' deprecated alias (a FutureWarning on stderr)
                warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                work = get_peft_model(work, lcfg)
        else:
            for p in work.parameters():
                p.requires_grad_(True)
        params = [p for p in work.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        work.train()
        losses: list[float] = []
        steps = 0
        t0 = time.perf_counter()
        total = cfg.max_steps or cfg.epochs * math.ceil(len(encs) / cfg.batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"fine-tune ({cfg.method})", leave=False)
        done = False
        while not done:
            order = torch.randperm(len(encs), generator=gen).tolist()
            for start in range(0, len(order), cfg.batch_size):
                batch = [encs[i] for i in order[start:start + cfg.batch_size]]
                ids, mask, labels = pad_batch(batch, tokenizer.pad_token_id, device)
                logits = work(input_ids=ids, attention_mask=mask).logits
                n_tok = (labels[:, 1:] != -100).sum().clamp_min(1)
                loss = answer_nll(logits, labels).sum() / n_tok
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                losses.append(float(loss.detach()))
                steps += 1
                if bar is not None:
                    bar.set_postfix(batch_loss=f"{losses[-1]:.3f}", refresh=False)
                    bar.update(1)
                if steps >= total:
                    done = True
                    break
        if bar is not None:
            bar.close()
        if cfg.method == "lora":
            work = work.merge_and_unload()
        work.eval()
        for p in work.parameters():
            p.requires_grad_(False)
    log = TrainLog(steps=steps, losses=losses, seconds=time.perf_counter() - t0)
    return (work, log) if return_log else work


# ---------------------------------------------------------------- evaluation

def normalise_answer(s: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding quotes and trailing punctuation."""
    s = s.strip().lower()
    s = re.sub(r"\s+", " ", s)
    return s.strip(" \"'`").rstrip(".!?;:").strip()


def exact_match(prediction: str, reference: str) -> bool:
    """Normalised equality of the prediction (or its first line) with the reference."""
    ref = normalise_answer(reference)
    pred = normalise_answer(prediction)
    first = normalise_answer(prediction.strip().split("\n")[0]) if prediction.strip() else ""
    return pred == ref or first == ref


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> list[float]:
    """The numbers written in ``text``, in order (thousands separators dropped: "1,000" is 1000)."""
    out = []
    for m in _NUMBER.finditer(text):
        tok = m.group().replace(",", "")
        try:
            out.append(float(tok))
        except ValueError:  # a lone "-" or "," run
            continue
    return out


#: Where a greedy continuation starts a new example of the prompt format (it is cut there).
_NEXT_EXAMPLE = re.compile(r"\n\s*(?:###|Instruction:|Input:|Response:)")


def numeric_match(prediction: str, reference: str) -> bool:
    """The **last** number of the prediction equals the last number of the reference (to 1e-9
    relative): worked answers end on their result ("... You should get $10.23 in change.").
    The prediction is first cut where it starts another example of the prompt format, so a
    model that rambles on into new instructions, or repeats numbers of the question, is not
    credited for a number it wrote along the way. ``False`` when either has no number."""
    ref = numbers_in(reference)
    pred = numbers_in(_NEXT_EXAMPLE.split(prediction, maxsplit=1)[0])
    if not ref or not pred:
        return False
    return abs(pred[-1] - ref[-1]) <= 1e-9 * max(1.0, abs(ref[-1]))


@dataclass
class EvalResult:
    """Per-probe and summary metrics of one model on held-out probes."""

    probe_ids: list[str]
    families: list[str | None]
    loglik: list[float]  # summed answer log-likelihood per probe (nats)
    n_tokens: list[int]
    correct: list[bool] | None = None
    predictions: list[str] | None = None

    def summary(self, mask: Sequence[bool] | None = None) -> dict[str, float]:
        m = np.ones(len(self.probe_ids), bool) if mask is None else np.asarray(mask, bool)
        if not m.any():
            return {"n": 0}
        ll = np.asarray(self.loglik)[m]
        nt = np.asarray(self.n_tokens)[m]
        out = {"n": int(m.sum()), "answer_loglik": float(ll.mean()),
               "answer_loglik_per_token": float(ll.sum() / nt.sum())}
        if self.correct is not None:
            out["exact_match"] = float(np.asarray(self.correct, float)[m].mean())
        return out

    def by_family(self) -> dict[str, dict[str, float]]:
        fams = sorted({str(f) for f in self.families})
        return {f: self.summary([str(x) == f for x in self.families]) for f in fams}

    def metric(self, name: str, families: Sequence[str] | None = None) -> float:
        wanted = None if families is None else set(families)
        mask = None if wanted is None else [f in wanted for f in self.families]
        s = self.summary(mask)
        if name not in s:
            raise ConfigError(f"Metric {name!r} not available; choose from {', '.join(METRICS)} "
                              "(exact_match needs evaluate(..., exact_match=True)).")
        return float(s[name])


def evaluate(model, tokenizer, probes: Sequence[Example] | Pool, *, template: str | None = None,
             exact_match_eval: bool = True, batch_size: int = 8, max_new_tokens: int | None = None,
             max_length: int | None = 256) -> EvalResult:
    """Answer log-likelihood of every probe and (optionally) greedy exact match."""
    probes = list(probes)
    if not probes:
        raise ConfigError("No probes to evaluate on.")
    template = template or default_template(model, tokenizer)
    encs = [encode_example(tokenizer, p, template=template, max_length=max_length) for p in probes]
    lps = answer_logprobs(model, encs, pad_id=tokenizer.pad_token_id, batch_size=batch_size)
    res = EvalResult([p.id for p in probes], [p.task for p in probes], [float(x.sum()) for x in lps],
                     [len(x) for x in lps])
    if exact_match_eval:
        mnt = max_new_tokens or (max(len(e.answer_ids) for e in encs) + 4)
        preds = [generate_answer(model, tokenizer, p, template=template, max_new_tokens=mnt) for p in probes]
        res.predictions = preds
        res.correct = [exact_match(pr, p.output) for pr, p in zip(preds, probes)]
    return res


# ---------------------------------------------------------------- arms and outcomes

@dataclass
class Outcome:
    """Fine-tuning outcomes of several selection arms (JSON-serialisable via :meth:`to_dict`).

    ``arms[arm] = {"mean", "ci" (95% t-interval over seeds), "seeds" (one value per seed),
    "n_train", "secondary" ({metric: {"mean", "ci", "seeds"}}), "per_family" ({family:
    metric mean over seeds})}``; ``base`` is the un-tuned model's value of ``metric``.
    """

    metric: str
    base: float
    arms: dict[str, dict[str, Any]]
    eval_families: list[str] | None = None
    base_summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        from .utils import jsonable

        return jsonable(asdict(self))

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Outcome":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})

    @classmethod
    def load(cls, path: str | Path) -> "Outcome":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


Selection = Sequence[str] | Callable[[int], Sequence[str]]


def run_arms(model, tokenizer, pool: Pool, selections: Mapping[str, Selection], heldout: Sequence[Example] | Pool, *,
             seeds: Sequence[int] = (0, 1, 2), config: FinetuneConfig | None = None,
             metric: str = "answer_loglik_per_token", eval_families: Sequence[str] | None = None,
             exact_match_eval: bool = True, include_base: bool = True, progress: bool = False,
             on_result: Callable[[str, int, dict[str, Any]], None] | None = None) -> Outcome:
    """Fine-tune one model per (arm, seed) and evaluate it on ``heldout``.

    ``selections``: ``arm -> ids`` (the same subset for every seed; seeds change the
    training order, LoRA initialisation) or ``arm -> f(seed) -> ids`` (e.g. a fresh random
    subset per seed). ``metric`` is computed on held-out probes of ``eval_families`` (all
    when ``None``); the other metrics are reported under ``secondary``, and every metric
    per family under ``per_family``. An arm named ``"base"`` is skipped (the base model is
    always evaluated once and reported as ``base``).
    """
    cfg = config or FinetuneConfig()
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.")
    if metric == "exact_match" and not exact_match_eval:
        raise ConfigError("metric='exact_match' needs exact_match_eval=True.")
    if len(seeds) < 1:
        raise ConfigError("Give at least one seed (three or more for confidence intervals).")
    heldout = list(heldout)
    template = cfg.template or default_template(model, tokenizer)
    metrics = [m for m in METRICS if exact_match_eval or m != "exact_match"]

    base_eval = evaluate(model, tokenizer, heldout, template=template, exact_match_eval=exact_match_eval)
    base_val = base_eval.metric(metric, eval_families)
    arms: dict[str, dict[str, Any]] = {}
    for arm, sel in selections.items():
        if arm == "base":
            continue
        per_seed: dict[str, list[float]] = {m: [] for m in metrics}
        fam_vals: dict[str, dict[str, list[float]]] = {}
        n_train = None
        for s in seeds:
            ids = list(sel(s) if callable(sel) else sel)
            n_train = len(ids)
            tuned = finetune(model, tokenizer, pool.subset(ids), cfg, seed=int(s), progress=progress)
            ev = evaluate(tuned, tokenizer, heldout, template=template, exact_match_eval=exact_match_eval)
            for m in metrics:
                per_seed[m].append(ev.metric(m, eval_families))
            for fam, summ in ev.by_family().items():
                for m in metrics:
                    fam_vals.setdefault(fam, {}).setdefault(m, []).append(summ[m])
            if on_result is not None:
                on_result(arm, int(s), {m: per_seed[m][-1] for m in metrics})
            del tuned
        vals = per_seed[metric]
        arms[arm] = {
            "mean": float(np.mean(vals)), "ci": list(t_interval(vals)), "seeds": vals, "n_train": n_train,
            "secondary": {m: {"mean": float(np.mean(v)), "ci": list(t_interval(v)), "seeds": v}
                          for m, v in per_seed.items() if m != metric},
            "per_family": {f: {m: float(np.mean(v)) for m, v in d.items()} for f, d in fam_vals.items()},
        }
    base_summary = {"overall": base_eval.summary(), "per_family": base_eval.by_family()}
    if eval_families is not None:
        wanted = set(eval_families)
        base_summary["eval_families"] = base_eval.summary([f in wanted for f in base_eval.families])
    return Outcome(metric=metric, base=base_val, arms=arms,
                   eval_families=list(eval_families) if eval_families is not None else None,
                   base_summary=base_summary if include_base else {},
                   config={**cfg.to_dict(), "template": template, "seeds": [int(s) for s in seeds],
                           "n_heldout": len(heldout)},
                   higher_is_better=metric != "answer_nll")
