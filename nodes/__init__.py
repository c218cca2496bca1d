"""ComfyUI nodes of ComfyUI-ReHyAt (V3 schema). Thin: parse inputs → call ``rehyat`` → outputs.

Each module of this package that defines ``NODES`` (a list of ``io.ComfyNode`` classes) is
collected by :func:`node_classes`, so adding a node touches no shared file. An import error in a
node module is raised, never swallowed: a broken pack must not load half its nodes silently.
"""

from __future__ import annotations

import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io

from .folders import register_rehyat_folder

register_rehyat_folder()


def node_classes() -> list[type[io.ComfyNode]]:
    """All node classes of the pack, module by module (sorted by module name)."""
    classes: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes.extend(getattr(module, "NODES", ()))
    return classes


class ReHyAtExtension(ComfyExtension):
    """The node list of this pack."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()


async def comfy_entrypoint() -> ReHyAtExtension:
    """ComfyUI's V3 entry point."""
    return ReHyAtExtension()
