"""Tokenising (demonstration, query, answer) with an answer-only mask (DESIGN.md §2).

A sequence is three token segments concatenated::

    prefix = [BOS] + demonstration segment      (just [BOS] — or nothing — with no demo)
    query  = the probe's prompt
    answer = the probe's answer (the only tokens scored)

Segments are tokenised separately and concatenated, so the demonstration prefix is a
token-level prefix shared by every probe: ICP can encode it once and reuse its KV cache,
and the per-pair ("naive") path sees exactly the same tokens.

Templates:

* ``paper``: the authors' context verbatim — ``"These examples may be helpful to answer
  the question\\n" + z + "\\n\\n" + x_p``, continuation ``y_p`` appended with no delimiter;
  ``z`` and ``x_p`` in the authors' text format (``Instruction: …\\nInput: …\\nResponse:``),
  ``y_p = " " + output``. The zero-shot baseline drops the whole demonstration segment
  (header included).
* ``plain``: the same without the header line.
* ``chat``: the tokenizer's chat template; the demonstration is an earlier
  user/assistant turn, the probe the last user turn, the answer the assistant's reply.

Truncation policy (``truncation="left"``, the default): when a sequence is longer than
the context, tokens are dropped from the **left of the demonstration** first (the probe
is never cut while the demonstration has tokens), then from the left of the query; the
answer is never truncated. A :class:`ContextTooLongWarning` names the example. With
``truncation="error"`` a :class:`~icp_influence.errors.ContextTooLongError` is raised instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from .data import Example, format_paper_text
from .errors import ContextTooLongError, DataFormatError, TemplateError

TEMPLATES = ("paper", "plain", "chat")
PAPER_HEADER = "These examples may be helpful to answer the question\n"
Truncation = Literal["left", "error"]


class ContextTooLongWarning(UserWarning):
    """A sequence was truncated to fit the model's context."""


@dataclass(frozen=True)
class Encoded:
    """Token ids of one (demonstration?, probe) pair. ``labels`` mask all but the answer."""

    prefix_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    truncated: int = 0

    @property
    def input_ids(self) -> list[int]:
        return [*self.prefix_ids, *self.query_ids, *self.answer_ids]

    @property
    def labels(self) -> list[int]:
        return [-100] * (len(self.prefix_ids) + len(self.query_ids)) + list(self.answer_ids)

    @property
    def answer_start(self) -> int:
        return len(self.prefix_ids) + len(self.query_ids)

    def __len__(self) -> int:
        return len(self.prefix_ids) + len(self.query_ids) + len(self.answer_ids)


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise TemplateError(f"Unknown template {template!r}; choose one of {', '.join(TEMPLATES)}.")
    return template


def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer normally prepends one, else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return [bos] if ids and ids[0] == bos else []


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids) if text else []


def _chat_split(tokenizer, demo: Example | None, probe: Example) -> tuple[str, str]:
    """Render the chat template and split it into (prefix text, query text).

    With messages S (system, if the template adds one), D (demo turns) and Q (the probe
    turn + generation prompt): full = S+D+Q and base = S+Q. We find |S| as the largest
    s with full[:s] == base[:s] and full[s+|D|:] == base[s:].
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("The tokenizer has no chat template; use template='paper' or 'plain'.")
    probe_msgs = [{"role": "user", "content": probe.prompt}]
    base = tokenizer.apply_chat_template(probe_msgs, add_generation_prompt=True, tokenize=False)
    if demo is None:
        # Split with a stand-in demonstration; the baseline prefix is what precedes Q.
        _, query = _chat_split(tokenizer, Example(id="_", instruction="_", output="_"), probe)
        return base[: len(base) - len(query)], query
    demo_msgs = [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.output}]
    full = tokenizer.apply_chat_template(demo_msgs + probe_msgs, add_generation_prompt=True, tokenize=False)
    d = len(full) - len(base)
    common = 0
    while common < len(base) and full[common] == base[common]:
        common += 1
    for s in range(common, -1, -1):
        if full[s + d:] == base[s:]:
            return full[: s + d], base[s:]
    raise TemplateError("Could not split the chat template into demonstration and probe parts.")


def segment_texts(template: str, demo: Example | None, probe: Example, tokenizer=None) -> tuple[str, str, str]:
    """The (prefix text, query text, answer text) of one pair under ``template``."""
    check_template(template)
    if not probe.output:
        raise DataFormatError(
            f"Probe {probe.id!r} has an empty answer: there is nothing to score. Give it an output or drop it."
        )
    if template == "chat":
        if tokenizer is None:
            raise TemplateError("template='chat' needs the tokenizer.")
        prefix, query = _chat_split(tokenizer, demo, probe)
        return prefix, query, probe.output
    query = format_paper_text(probe, with_output=False)
    answer = " " + probe.output
    if demo is None:
        return "", query, answer
    body = format_paper_text(demo, with_output=True) + "\n\n"
    return (PAPER_HEADER + body if template == "paper" else body), query, answer


def encode_pair(
    tokenizer,
    probe: Example,
    demo: Example | None = None,
    *,
    template: str = "paper",
    max_length: int | None = None,
    truncation: Truncation = "left",
) -> Encoded:
    """Tokenise one (demonstration, probe) pair; see the module docstring for the policy."""
    prefix_text, query_text, answer_text = segment_texts(template, demo, probe, tokenizer)
    prefix = _bos(tokenizer) + _tok(tokenizer, prefix_text)
    query = _tok(tokenizer, query_text)
    answer = _tok(tokenizer, answer_text)
    if not answer:
        raise DataFormatError(f"Probe {probe.id!r}: the answer tokenises to nothing; give it a non-empty output.")
    enc = Encoded(tuple(prefix), tuple(query), tuple(answer))
    if max_length is not None and len(enc) > max_length:
        enc = _truncate(enc, max_length, truncation, probe, demo)
    return enc


def _truncate(enc: Encoded, max_length: int, truncation: str, probe: Example, demo: Example | None) -> Encoded:
    excess = len(enc) - max_length
    names = f"probe {probe.id!r}" + (f" with demonstration {demo.id!r}" if demo is not None else "")
    if truncation == "error":
        raise ContextTooLongError(
            f"{names}: {len(enc)} tokens exceed the model's context of {max_length}. Shorten the "
            "example, drop it, or pass truncation='left' to cut the demonstration from the left."
        )
    if truncation != "left":
        raise TemplateError(f"Unknown truncation policy {truncation!r}; use 'left' or 'error'.")
    if len(enc.answer_ids) >= max_length:
        raise ContextTooLongError(
            f"{names}: the answer alone ({len(enc.answer_ids)} tokens) does not fit the context of "
            f"{max_length}; the answer is never truncated — shorten it or drop the probe."
        )
    prefix, query = list(enc.prefix_ids), list(enc.query_ids)
    keep_bos = 1 if prefix and demo is not None else 0
    cut_demo = min(excess, max(0, len(prefix) - keep_bos))
    prefix = prefix[:keep_bos] + prefix[keep_bos + cut_demo:]
    rest = excess - cut_demo
    if rest:
        query = query[rest:]
    warnings.warn(
        f"{names}: {len(enc)} tokens exceed the context of {max_length}; dropped {cut_demo} "
        f"demonstration and {rest} query tokens from the left.",
        ContextTooLongWarning, stacklevel=3,
    )
    return Encoded(tuple(prefix), tuple(query), enc.answer_ids, truncated=excess)


def encode_example(tokenizer, ex: Example, *, template: str = "paper", max_length: int | None = None,
                   truncation: Truncation = "left") -> Encoded:
    """The example on its own (no demonstration): the loss used by gradient influence and fine-tuning."""
    return encode_pair(tokenizer, ex, None, template=template, max_length=max_length, truncation=truncation)
