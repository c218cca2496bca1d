"""sampler: where ComfyUI is and how to run the sampler part (``scripts/gpu_check_sampler.py``).

The library never imports ComfyUI, so this part runs a script of the repository in its own process
(the same time guard as the other parts). ComfyUI is looked for in ``$REHYAT_COMFYUI_DIR``, then
as the ComfyUI this pack is installed in (``ComfyUI/custom_nodes/<pack>``), then in the
repository's provisioned ``.cache/comfyui``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import GpuCheckConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check_sampler.py"
ENV_DIR = "REHYAT_COMFYUI_DIR"


def _is_comfyui(root: Path) -> bool:
    return (root / "comfy" / "model_management.py").is_file() and (root / "comfy_extras").is_dir()


def find_comfyui() -> Path | None:
    """The ComfyUI directory to use, or None (see the module docstring)."""
    candidates = []
    if os.environ.get(ENV_DIR):
        candidates.append(Path(os.environ[ENV_DIR]).expanduser())
    if REPO_ROOT.parent.name == "custom_nodes":
        candidates.append(REPO_ROOT.parent.parent)
    candidates.append(REPO_ROOT / ".cache" / "comfyui")
    return next((c.resolve() for c in candidates if _is_comfyui(c)), None)


def command(config: GpuCheckConfig, seconds: float) -> list[str] | str:
    """The sampler part's command line, or the reason it cannot run."""
    root = find_comfyui()
    if root is None:
        return (f"ComfyUI not found (set ${ENV_DIR}, install the pack in ComfyUI/custom_nodes, or run "
                "python scripts/provision_comfyui.py)")
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing (the sampler part runs from a checkout of the repository)"
    return [sys.executable, str(SCRIPT), json.dumps(config.to_dict()), str(seconds), str(root)]


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Streaming's speed-up over the context windows and its peak as a share of theirs."""
    named = {c["case"]: c for c in cases}
    stream, windows = named.get("streaming"), named.get("context_windows")
    if not stream or not windows:
        return {}
    return {"speedup_streaming_vs_windows": windows["seconds"] / stream["seconds"],
            "peak_share_streaming_vs_windows": stream["peak_memory_mib"] / windows["peak_memory_mib"]}
