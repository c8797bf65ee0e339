"""Token strings as figures show them: whitespace made visible.

A language model's tokens often start with a space (`` Paris``) or are a newline; printed
as they are, such tokens look empty or identical. Every token plot of the course passes its
labels through :func:`visible_token`: a space becomes ``␣``, a newline (or carriage return) ``↵``, a tab ``⇥``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "↵"}


def visible_token(token: str) -> str:
    """``token`` with every space, newline, tab and carriage return drawn as a visible symbol."""
    out = "".join(VISIBLE.get(ch, ch) for ch in str(token))
    return out if out else "∅"  # an empty decoded token (e.g. a partial byte) is still shown


def visible_tokens(tokens: Iterable[str]) -> list[str]:
    return [visible_token(t) for t in tokens]


def decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own, whitespace made visible."""
    return [visible_token(tokenizer.decode([int(t)])) for t in ids]
