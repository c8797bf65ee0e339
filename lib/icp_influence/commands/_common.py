"""Helpers shared by the subcommands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError


def parse_params(text: str | None, allowed: Sequence[str] | None = None, *, command: str = "this command") -> dict:
    """``--params``: a JSON object (or a path to a JSON file); keys limited to ``allowed`` when given."""
    if not text:
        return {}
    p = Path(text)
    raw = p.read_text(encoding="utf-8") if (not text.lstrip().startswith("{") and p.exists()) else text
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--params is not valid JSON ({e.msg} at column {e.colno}): {text[:80]!r}.") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object, got {type(params).__name__}.")
    if allowed is not None:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"Unknown --params key(s) {', '.join(unknown)} for {command}; allowed: {', '.join(allowed)}.")
    return params
