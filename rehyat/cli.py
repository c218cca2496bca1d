"""Command line of ReHyAt: ``python -m rehyat <command>`` (see :mod:`rehyat.commands`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import command_modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The top-level parser with one subparser per registered command, and the command modules."""
    parser = argparse.ArgumentParser(
        prog="rehyat",
        description="ReHyAt: recurrent hybrid attention for Wan2.1 (linear time, constant memory).",
    )
    parser.add_argument("--version", action="version", version=f"rehyat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    parser.command_parsers = {}  # command name → its subparser (errors of a command print its usage)
    for module in command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        modules[module.NAME] = module
        parser.command_parsers[module.NAME] = command
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rehyat`` / the ``rehyat`` script."""
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except (ValueError, OSError) as exc:  # bad input, or a file that cannot be read / written: one line
        parser.command_parsers.get(args.command, parser).error(str(exc))  # "rehyat <command>: error: …"
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
