"""Tokenising (demonstration, query, answer) with an answer-only mask (docs/design.md).

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


_SENT_U, _SENT_A, _SENT_Q = "\ue000", "\ue001", "\ue002"


def _chat_layout(tokenizer) -> tuple[str, str]:
    """(system preamble S, user-turn opener O) of the tokenizer's chat template.

    Found by rendering sentinel contents: ``base = S + O + <probe> + ...`` and
    ``full = S + O + <demo user> + ... + <demo answer> + M + <probe> + ...`` where
    ``M = (assistant-turn closing) + O``. The closing is the longest common start of M and
    the text after the probe (``C + generation prompt``), cut back to a newline or the start
    of a special token, so the probe's turn starts at its own opener.
    """
    user = [{"role": "user", "content": _SENT_Q}]
    base = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENT_U}, {"role": "assistant", "content": _SENT_A}] + user,
        add_generation_prompt=True, tokenize=False)
    before = base[: base.index(_SENT_Q)]
    after = base[base.index(_SENT_Q) + 1:]
    m = full[full.index(_SENT_A) + 1: full.index(_SENT_Q)]
    common = 0
    while common < min(len(m), len(after)) and m[common] == after[common]:
        common += 1
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    cut = 0
    for p in range(common, 0, -1):
        if m[:p].endswith("\n") or any(m.startswith(t, p) for t in specials):
            cut = p
            break
    opener = m[cut:]
    if not before.endswith(opener):  # unusual template: fall back to the longest common suffix
        k = 0
        while k < min(len(m), len(before)) and m[len(m) - 1 - k] == before[len(before) - 1 - k]:
            k += 1
        opener = m[len(m) - k:]
    return before[: len(before) - len(opener)], opener


def _chat_split(tokenizer, demo: Example | None, probe: Example) -> tuple[str, str]:
    """Render the chat template and split it into (prefix text, query text).

    ``prefix`` = system preamble (+ the demonstration's user and assistant turns);
    ``query`` = the probe's user turn and the generation prompt — identical with and
    without the demonstration.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("The tokenizer has no chat template; use template='paper' or 'plain'.")
    system, _ = _chat_layout(tokenizer)
    probe_msgs = [{"role": "user", "content": probe.prompt}]
    base = tokenizer.apply_chat_template(probe_msgs, add_generation_prompt=True, tokenize=False)
    if not base.startswith(system):
        raise TemplateError("The chat template renders a probe-dependent preamble; use template='paper'.")
    query = base[len(system):]
    if demo is None:
        return system, query
    demo_msgs = [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.output}]
    full = tokenizer.apply_chat_template(demo_msgs + probe_msgs, add_generation_prompt=True, tokenize=False)
    if not full.endswith(query):
        raise TemplateError("Could not split the chat template into demonstration and probe parts; use template='paper'.")
    return full[: len(full) - len(query)], query


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
    bos = _bos(tokenizer)
    prefix = bos + _tok(tokenizer, prefix_text)
    query = _tok(tokenizer, query_text)
    answer = _tok(tokenizer, answer_text)
    if not answer:
        raise DataFormatError(f"Probe {probe.id!r}: the answer tokenises to nothing; give it a non-empty output.")
    enc = Encoded(tuple(prefix), tuple(query), tuple(answer))
    if max_length is not None and len(enc) > max_length:
        enc = _truncate(enc, max_length, truncation, probe, demo, n_keep=len(bos))
    return enc


def _truncate(enc: Encoded, max_length: int, truncation: str, probe: Example, demo: Example | None,
              n_keep: int = 0) -> Encoded:
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
    keep_bos = min(n_keep, len(prefix))  # a leading BOS is kept
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


class PairEncoder:
    """Tokenises every example once; a pair's segments are concatenations of cached ids.

    ``pair(probe, demo)`` equals :func:`encode_pair` (same prefix, query and answer ids,
    same truncation, warnings and errors), but each demonstration's prefix and each
    probe's query/answer are tokenised — and, for ``chat``, the chat template rendered —
    once per example rather than once per pair (tests check the equality for every
    template, truncation included).

    For ``chat`` the demonstration prefix is rendered with a sentinel probe and cut at the
    probe's turn, which assumes the template renders earlier turns independently of the
    last user message (true of ordinary chat templates). The first pair is checked against
    the per-pair split; a template that fails the check is encoded pair by pair (slower,
    still exact).
    """

    def __init__(self, tokenizer, *, template: str = "paper", max_length: int | None = None,
                 truncation: Truncation = "left"):
        self.tokenizer = tokenizer
        self.template = check_template(template)
        self.max_length = max_length
        self.truncation = truncation
        self.bos = _bos(tokenizer)
        self._prefix: dict[Example | None, tuple[int, ...]] = {}
        self._probe: dict[Example, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._system: str | None = None
        self._sentinel_query: str | None = None
        self.per_pair = False   # set when a chat template is not compositional
        self._checked = template != "chat"

    # ---- texts (rendered once per example)
    def _chat_parts(self) -> tuple[str, str]:
        if self._system is None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise TemplateError("The tokenizer has no chat template; use template='paper' or 'plain'.")
            self._system, _ = _chat_layout(self.tokenizer)
            self._sentinel_query = self._probe_query_text(Example("sentinel", _SENT_Q))
        return self._system, self._sentinel_query  # type: ignore[return-value]

    def _probe_query_text(self, probe: Example) -> str:
        system = self._system or ""
        base = self.tokenizer.apply_chat_template([{"role": "user", "content": probe.prompt}],
                                                  add_generation_prompt=True, tokenize=False)
        if not base.startswith(system):
            raise TemplateError("The chat template renders a probe-dependent preamble; use template='paper'.")
        return base[len(system):]

    def prefix_text(self, demo: Example | None) -> str:
        if self.template != "chat":
            if demo is None:
                return ""
            body = format_paper_text(demo, with_output=True) + "\n\n"
            return PAPER_HEADER + body if self.template == "paper" else body
        system, sentinel_query = self._chat_parts()
        if demo is None:
            return system
        msgs = [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.output},
                {"role": "user", "content": _SENT_Q}]
        full = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        if not full.endswith(sentinel_query):
            self.per_pair = True
            return full
        return full[: len(full) - len(sentinel_query)]

    def probe_texts(self, probe: Example) -> tuple[str, str]:
        if not probe.output:
            raise DataFormatError(
                f"Probe {probe.id!r} has an empty answer: there is nothing to score. Give it an output or drop it."
            )
        if self.template == "chat":
            self._chat_parts()
            return self._probe_query_text(probe), probe.output
        return format_paper_text(probe, with_output=False), " " + probe.output

    # ---- token ids (cached)
    def prefix_ids(self, demo: Example | None) -> tuple[int, ...]:
        """``[BOS] + demonstration segment`` (just the BOS / chat preamble when ``demo`` is None)."""
        ids = self._prefix.get(demo)
        if ids is None:
            ids = tuple(self.bos + _tok(self.tokenizer, self.prefix_text(demo)))
            self._prefix[demo] = ids
        return ids

    def probe_ids(self, probe: Example) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(query_ids, answer_ids)`` of a probe."""
        ids = self._probe.get(probe)
        if ids is None:
            q_text, a_text = self.probe_texts(probe)
            answer = tuple(_tok(self.tokenizer, a_text))
            if not answer:
                raise DataFormatError(f"Probe {probe.id!r}: the answer tokenises to nothing; give it a non-empty output.")
            ids = (tuple(_tok(self.tokenizer, q_text)), answer)
            self._probe[probe] = ids
        return ids

    def pair(self, probe: Example, demo: Example | None = None) -> Encoded:
        """The encoded pair, equal to ``encode_pair(tokenizer, probe, demo, ...)``."""
        if not self._checked and demo is not None:
            self._checked = True
            q, a = self.probe_ids(probe)
            ref = encode_pair(self.tokenizer, probe, demo, template=self.template)
            if self.per_pair or (self.prefix_ids(demo), q, a) != (ref.prefix_ids, ref.query_ids, ref.answer_ids):
                self.per_pair = True
        if self.per_pair:
            return encode_pair(self.tokenizer, probe, demo, template=self.template, max_length=self.max_length,
                               truncation=self.truncation)
        q, a = self.probe_ids(probe)
        enc = Encoded(self.prefix_ids(demo), q, a)
        if self.max_length is not None and len(enc) > self.max_length:
            enc = _truncate(enc, self.max_length, self.truncation, probe, demo, n_keep=len(self.bos))
        return enc


def encode_example(tokenizer, ex: Example, *, template: str = "paper", max_length: int | None = None,
                   truncation: Truncation = "left") -> Encoded:
    """The example on its own (no demonstration): the loss used by gradient influence and fine-tuning."""
    return encode_pair(tokenizer, ex, None, template=template, max_length=max_length, truncation=truncation)
