"""Command line: ``python -m icp_influence`` / ``icp-influence``.

Subcommands: ``list``, ``run EXPERIMENT [--smoke] [--json] [--seed N]``,
``bench NAME [--smoke] [--json]``, and those of :mod:`icp_influence.commands` (``score``,
``merge``, ``recipe``, ``fetch-model``). ``run`` and ``score`` first fit torch's CPU threads
to the machine (:func:`~icp_influence.utils.fit_threads`; ``--threads N`` fixes them).
With ``--json`` the last line of stdout is one JSON object. Bad input (unknown names,
malformed files, ...) prints a one-line error to stderr and exits with code 2 — never a
traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable, Sequence

from .errors import IcpError

EXIT_BAD_INPUT = 2
# Commands that compute with torch on the CPU: their thread count is fitted to the machine
# (beside other CPU-bound work, torch's default pool of every core is several times slower).
# ``bench`` measures what it is given (ICP_THREADS if set, else torch's default) and records it.
THREADED_COMMANDS = ("run", "score")
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def add_command(register: Callable[[Any], None]) -> Callable[[Any], None]:
    """Let another module add subcommands: ``register(subparsers)`` must set ``func``."""
    _EXTRA_COMMANDS.append(register)
    return register


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
            if len(value) > 200:
                value = value[:197] + "..."
        print(f"{key:>32}: {value}")
    if as_json:
        from .utils import jsonable

        print(json.dumps(jsonable(result), sort_keys=False))


def cmd_list(args: argparse.Namespace) -> None:
    from .registry import entries

    for kind in ("experiment", "benchmark"):
        known = entries(kind)
        print(f"{kind}s ({len(known)}):")
        for e in known.values():
            print(f"  {e.name:<28} {e.summary}")
    if getattr(args, "json", False):
        print(json.dumps({k + "s": list(entries(k)) for k in ("experiment", "benchmark")}))


def _run_entry(kind: str, args: argparse.Namespace) -> None:
    from .registry import entries, get
    from .utils import code_version, seed_everything

    names = list(entries(kind)) if (kind == "benchmark" and args.name == "all") else [args.name]
    results: dict[str, Any] = {}
    for name in names:
        entry = get(kind, name)
        seed_everything(args.seed)
        t0 = time.perf_counter()
        print(f"[{kind}] {name}{' (smoke)' if args.smoke else ''} ...", file=sys.stderr, flush=True)
        result = entry.func(smoke=args.smoke, seed=args.seed)
        # every saved result records the code that made it (benchmarks/results/*.json come from here)
        result = {**result, "wall_s": round(time.perf_counter() - t0, 3)}
        result.setdefault("code_version", code_version())
        results[name] = result
    final = results[names[0]] if len(names) == 1 else results
    _print_result(final, args.json)


def add_threads_option(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``--threads N``: before the command (``icp-influence --threads 1 score …``) or after it on
    ``run``/``score`` (there the default is suppressed, so the global value stands)."""
    parser.add_argument("--threads", type=int, default=default, metavar="N",
                        help="torch CPU threads for run/score (default: the cores other work leaves idle; "
                             "env ICP_THREADS, which benchmarks also read)")


def _fit_threads(args: argparse.Namespace) -> None:
    from .errors import ConfigError
    from .utils import fit_threads

    if args.command not in THREADED_COMMANDS:
        raise ConfigError(f"--threads applies to {' and '.join(THREADED_COMMANDS)}, not '{args.command}' "
                          "(benchmarks read ICP_THREADS from the environment, which also reaches the "
                          "scoring processes a recipe starts).")
    fit_threads(args.threads, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icp-influence", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_threads_option(p, default=None)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("list", help="list known experiments and benchmarks")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_list)

    for kind, cmd in (("experiment", "run"), ("benchmark", "bench")):
        sp = sub.add_parser(cmd, help=f"run a registered {kind}" + (" ('all' for every one)" if kind == "benchmark" else ""))
        sp.add_argument("name")
        sp.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), as in CI")
        sp.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        sp.add_argument("--seed", type=int, default=0)
        if cmd in THREADED_COMMANDS:
            add_threads_option(sp)
        sp.set_defaults(func=lambda a, kind=kind: _run_entry(kind, a))

    from . import commands  # noqa: F401  (each module there registers its subcommands)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.command in THREADED_COMMANDS or args.threads is not None:
            _fit_threads(args)
        args.func(args)
    except IcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # Ctrl-C / SIGINT; chunked runs stop at a chunk boundary
        print(f"interrupted: {e}" if str(e) else
              "interrupted: completed chunks are kept; run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
