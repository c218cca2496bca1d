"""Subcommands of ``python -m rehyat``: one module per command, each with one job.

A command module in this package defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` (a ``ValueError`` from ``run`` becomes a usage error naming the problem); it is
found by :func:`command_modules`, so adding a command touches no shared file. Every module is
imported to build the parser, so a command keeps its heavy or optional imports (diffusers,
transformers, huggingface_hub, matplotlib) inside ``run``: a missing optional dependency then breaks
only that command, with a message saying what to install.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """Every command module of this package, sorted by command name."""
    modules = [importlib.import_module(f"{__name__}.{info.name}")
               for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    return sorted(modules, key=lambda module: module.NAME)
