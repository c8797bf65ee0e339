"""``recipe CONFIG [--override key=value ...] [--dry-run] [--steps ...]``: the paper-scale run
(:mod:`icp_influence.recipe`) from the command line."""
from __future__ import annotations

import argparse
import json

from ..cli import add_command
from ..recipe import STEPS, config_path, load_config, run_recipe


def cmd_recipe(args: argparse.Namespace) -> None:
    path = config_path(args.config)
    config = load_config(path, args.override)
    config["_config_file"] = str(path)
    config["_config_dir"] = str(path.parent)
    config["_overrides"] = list(args.override)
    steps = args.steps.split(",") if args.steps else list(STEPS)
    result = run_recipe(config, steps=steps, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(result, default=str))
    elif not args.dry_run:
        print(json.dumps({k: v for k, v in result.items() if k != "commands"}, indent=2, default=str))


@add_command
def register(sub) -> None:
    sp = sub.add_parser("recipe", help="the paper-scale run from a JSON config: probes, sharded scoring, merge, compare")
    sp.add_argument("config", help="config file, or a packaged name such as paper_alpaca_pythia1b")
    sp.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="change a config value (dotted keys reach sections: icp.batch_size=8); repeatable")
    sp.add_argument("--steps", default=None, help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    sp.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sp.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    sp.set_defaults(func=cmd_recipe)
