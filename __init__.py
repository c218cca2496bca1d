"""ComfyUI entry point of ComfyUI-ReHyAt.

Guarded: importing this package outside ComfyUI (no ``comfy_api``) works and simply exposes no
nodes. Inside ComfyUI the V3 extension is served through ``comfy_entrypoint`` and the frontend
extension from ``web/``. The nodes import the pure-PyTorch core relatively (``from ..rehyat import
…``), never through ``sys.path``: a pip-installed ``rehyat`` can neither shadow the pack's copy nor
be shadowed by it.
"""

from __future__ import annotations

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
