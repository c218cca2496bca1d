"""Subcommands of ``python -m rehyat``: one module per command, each with one job.

A command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
(a ``ValueError`` from ``run`` becomes a usage error naming the problem). Register it in
:data:`COMMAND_MODULES`. Every module is imported to build the parser, so a command keeps its
heavy or optional imports (diffusers, transformers, huggingface_hub, matplotlib) inside ``run``:
a missing optional dependency then breaks only that command, with a message saying what to install.
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "compare",
)
