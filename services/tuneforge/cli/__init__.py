"""The `tuneforge` command: run services, the embedded platform and the demo, and act as a client.

One module per command group; each `register`s its subcommands. Modules import the platform's
heavy parts (torch, the services) only inside the commands that need them, so client commands
such as `tuneforge health` start in well under a second.
"""

from __future__ import annotations

import argparse
import sys

from tuneforge.cli import (
    adapters,
    admin,
    datasets,
    evals,
    feedback,
    files,
    inference,
    jobs,
    models,
    platform,
    selfinstruct,
)
from tuneforge.cli.inference import cmd_generate
from tuneforge.cli.options import DEFAULT_ADDRESS

__all__ = ["DEFAULT_ADDRESS", "build_parser", "cmd_generate", "main"]

#: Command groups in the order `tuneforge --help` lists them.
GROUPS = (platform, files, datasets, jobs, inference, feedback, selfinstruct, evals, adapters, models, admin)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuneforge.client import TuneforgeError
    from tuneforge.common.errors import TuneforgeError as DomainError

    try:
        return args.func(args)
    except (TuneforgeError, DomainError) as exc:
        print(f"tuneforge: {exc}", file=sys.stderr)
        return 1
