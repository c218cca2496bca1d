"""The profiler: analytic FLOPs, measured latency and memory of softmax, ReHyAt, uniform hybrid and
context-window configurations of a Wan2.1 DiT, with plots and reports (issue 13).

One job per module: :mod:`.presets` (model shapes, latent grids), :mod:`.cases` (configurations),
:mod:`.analytic` (whole-DiT FLOPs), :mod:`.runners` (runnable models), :mod:`.measure` (latency,
memory, subprocess isolation), :mod:`.sweep` (the report), :mod:`.plots`, :mod:`.report`.
"""

from .analytic import BlockFlops, ModelFlops, block_flops, model_flops, outside_block_flops
from .cases import (
    Case,
    ContextWindowCase,
    ReHyAtCase,
    SoftmaxCase,
    UniformHybridCase,
    case_from_dict,
)
from .measure import Measurement, MeasureSpec, measure_in_subprocess, measure_runner
from .plots import chunk_figure, figure_to_array, length_figure, summary_figure
from .presets import PRESETS, LatentGrid, WanShape, get_preset, parse_latent, shape_of_wan_module
from .report import format_table, write_json, write_report
from .runners import Runner, comfy_runner, wandit_runner
from .sweep import ProfileRequest, flops_entry, profile

__all__ = [
    "PRESETS", "BlockFlops", "Case", "ContextWindowCase", "LatentGrid", "MeasureSpec", "Measurement",
    "ModelFlops", "ProfileRequest", "ReHyAtCase", "Runner", "SoftmaxCase", "UniformHybridCase", "WanShape",
    "block_flops", "case_from_dict", "chunk_figure", "comfy_runner", "figure_to_array", "flops_entry",
    "format_table", "get_preset", "length_figure", "measure_in_subprocess", "measure_runner", "model_flops",
    "outside_block_flops", "parse_latent", "profile", "shape_of_wan_module", "summary_figure",
    "wandit_runner", "write_json", "write_report",
]
