"""The ``device`` section of gpu-check: what ran the measurements."""

from __future__ import annotations

import platform
from typing import Any

import torch


def device_info(device: str) -> dict[str, Any]:
    """Name, memory, torch / CUDA / cuDNN versions and the SDPA kernels this build offers."""
    dev = torch.device(device)
    info: dict[str, Any] = {"device": str(dev), "type": dev.type, "torch": torch.__version__,
                            "cuda": torch.version.cuda, "python": platform.python_version(),
                            "machine": platform.platform()}
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available in this torch build / machine; "
                             "use --device cpu --tiny for the CPU run")
        props = torch.cuda.get_device_properties(dev)
        info.update(name=props.name, memory_gib=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp_enabled=torch.backends.cuda.mem_efficient_sdp_enabled())
    else:
        info.update(name=platform.processor() or "cpu", memory_gib=None, threads=torch.get_num_threads())
    return info
