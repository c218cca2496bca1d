"""ComfyUI entry point of ComfyUI-ReHyAt.

Guarded: importing this package outside ComfyUI (no ``comfy_api``) works and simply exposes no
nodes. Inside ComfyUI the V3 extension is served through ``comfy_entrypoint`` and the frontend
extension from ``web/``.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # make the pure-PyTorch core importable as ``rehyat``
    sys.path.append(_HERE)

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
