"""ComfyUI nodes of ComfyUI-ReHyAt (V3 schema). Thin: parse inputs → call ``rehyat`` → outputs."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .folders import register_rehyat_folder
from .patch import ReHyAtPatchWan

register_rehyat_folder()


class ReHyAtExtension(ComfyExtension):
    """The node list of this pack."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ReHyAtPatchWan]


async def comfy_entrypoint() -> ReHyAtExtension:
    """ComfyUI's V3 entry point."""
    return ReHyAtExtension()
