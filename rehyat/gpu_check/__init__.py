"""``python -m rehyat gpu-check``: one command that measures the pack on a CUDA device (issue 23).

Parts, each in its own time-guarded process (:mod:`.guard`): :mod:`.correctness` (op_correct),
:mod:`.speed` (op_speed), :mod:`.dit` (dit), :mod:`.sampler` (sampler, through ComfyUI);
:mod:`.device` describes the device, :mod:`.config` holds the sizes (full and ``--tiny``),
:mod:`.run` assembles the report.
"""

from .config import PARTS, GpuCheckConfig, tiny_config
from .run import run_gpu_check

__all__ = ["PARTS", "GpuCheckConfig", "run_gpu_check", "tiny_config"]
