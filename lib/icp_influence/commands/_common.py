"""Helpers shared by the scoring subcommands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError


def add_run_arguments(sp, *, method_choices: Sequence[str], default_method: str, method_help: str | None = None) -> None:
    """The arguments every scoring command shares: model, pool, probes, run folder, template, method."""
    from ..encoding import TEMPLATES

    sp.add_argument("--model", default="smollm2-135m-instruct", help="model spec (embedded, tiny-*, hub id or folder)")
    sp.add_argument("--pool", required=True, help="candidates: .json/.jsonl/.txt file or synthetic:N[:SEED]")
    sp.add_argument("--probes", required=True, help="probes: .json/.jsonl/.txt file or synthetic:N[:SEED]")
    sp.add_argument("--out", required=True, help="run directory (chunks, run.json, scores.*)")
    sp.add_argument("--template", default="paper", choices=TEMPLATES)
    sp.add_argument("--method", default=default_method, choices=method_choices, help=method_help)


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
