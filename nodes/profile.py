"""Node: profile a Wan2.1 model's cost — FLOPs (analytic), latency and memory (measured) — for
softmax, ReHyAt, uniform hybrid and ComfyUI context windows; returns a plot and a table."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..rehyat.planning import WEIGHT_FORMATS
from ..rehyat.planning.profile_section import profile_memory_plan
from ..rehyat.profiling import (
    PRESETS,
    ContextWindowCase,
    ProfileRequest,
    ReHyAtCase,
    comfy_runner,
    figure_to_array,
    format_table,
    get_preset,
    measure_runner,
    profile,
    shape_of_wan_module,
    summary_figure,
)
from ..rehyat.profiling.presets import LatentGrid
from ..rehyat.video_latent import latent_frame_count, video_latent_shape
from .conversion_widgets import causal_input, chunk_frames_input, overlap_frames_input


def parse_int_list(name: str, text: str, *, low: int) -> tuple[int, ...]:
    """``"81, 161"`` → ``(81, 161)``; a ValueError naming ``name`` otherwise."""
    try:
        values = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated integers ≥ {low}; got {text!r}") from exc
    if not values or min(values) < low:
        raise ValueError(f"{name} must be comma-separated integers ≥ {low}; got {text!r}")
    return values


class ReHyAtProfile(io.ComfyNode):
    """FLOPs, latency and memory of softmax / ReHyAt / uniform hybrid / context windows."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: an optional model (else a preset), the video size, the configurations; outputs:
        the plot, the table and the JSON report."""
        return io.Schema(
            node_id="ReHyAtProfile",
            display_name="ReHyAt Profile",
            category="ReHyAt/analysis",
            is_experimental=True,
            description=(
                "Compares the cost of Wan2.1 softmax attention, a ReHyAt configuration, uniform hybrid "
                "attention (Attention Surgery style) and ComfyUI context windows: analytic FLOPs against "
                "video length and against chunk size Tc, and — for a connected model with 'measure' on — "
                "measured latency per evaluation and peak memory. Returns a plot, a table and JSON."
            ),
            inputs=[
                io.Model.Input("model", optional=True,
                               tooltip="Wan2.1 model to profile (its sizes; measured when 'measure' is on). "
                                       "Leave empty to use the preset."),
                io.Combo.Input("preset", options=sorted(PRESETS), default="wan2.1-1.3b",
                               tooltip="model sizes used when no model is connected"),
                io.Int.Input("width", default=832, min=16, max=8192, step=16, tooltip="video width (px)"),
                io.Int.Input("height", default=480, min=16, max=8192, step=16, tooltip="video height (px)"),
                io.Int.Input("length", default=81, min=1, max=100000, step=4,
                             tooltip="video frames of the main comparison (81 = 5 s at 16 fps)"),
                io.String.Input("lengths", default="81,161,241,321",
                                tooltip="video lengths in frames, comma-separated, for the plots"),
                chunk_frames_input("The ReHyAt case's "),
                overlap_frames_input("The ReHyAt case's "),
                io.Int.Input("num_blocks", default=1000, min=0, max=1000,
                             tooltip="ReHyAt blocks (clamped to the model's block count; 1000 = all)"),
                causal_input("The ReHyAt case's "),
                io.Combo.Input("forward_mode", options=["parallel", "recurrent"], default="parallel",
                               tooltip="ReHyAt form that is measured (FLOPs are the same)"),
                io.String.Input("uniform_rates", default="2,4,8",
                                tooltip="uniform-hybrid rates R (softmax on every R-th key), e.g. 2,4,8"),
                io.Boolean.Input("context_windows", default=True,
                                 tooltip="include ComfyUI context windows (static standard schedule)"),
                io.Int.Input("context_length", default=81, min=1, max=100000, step=4,
                             tooltip="context window length in video frames (as WAN Context Windows)"),
                io.Int.Input("context_overlap", default=16, min=0, max=100000,
                             tooltip="context window overlap in video frames (as WAN Context Windows)"),
                io.Combo.Input("accounting", options=["incremental", "paper"], default="incremental",
                               tooltip="linear-part FLOP accounting: rehyat's kernels, or the paper's"),
                io.Boolean.Input("measure", default=False,
                                 tooltip="run the connected model per case and length (slow when long)"),
                io.Int.Input("repeats", default=2, min=1, max=100, tooltip="timed runs per measurement"),
                io.Float.Input("gpu_memory_gib", default=24.0, min=1.0, max=1024.0, step=1.0, optional=True,
                               tooltip="memory plan: GPU memory in GiB (as python -m rehyat plan)"),
                io.Combo.Input("weights", options=list(WEIGHT_FORMATS), default="bf16", optional=True,
                               tooltip="memory plan: weight storage format"),
                io.Int.Input("steps", default=30, min=1, max=10000, optional=True,
                             tooltip="memory plan: sampling steps (sizes the streaming state store)"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="memory plan: CFG scale (1 = no uncond pass)"),
            ],
            outputs=[
                io.Image.Output(display_name="plot"),
                io.String.Output(display_name="table"),
                io.String.Output(display_name="json"),
            ],
        )

    @classmethod
    def execute(cls, preset, width, height, length, lengths, chunk_frames, overlap_frames, num_blocks, causal,
                forward_mode, uniform_rates, context_windows, context_length, context_overlap, accounting,
                measure, repeats, model=None, gpu_memory_gib=24.0, weights="bf16", steps=30,
                cfg=5.0) -> io.NodeOutput:
        """Build the profile request, run it and render the report."""
        if measure and model is None:
            raise ValueError("measure needs a connected model: connect a Wan2.1 MODEL or turn measure off")
        shape = get_preset(preset) if model is None else shape_of_wan_module(
            model.get_model_object("diffusion_model"))
        frames = [latent_frame_count(f) for f in parse_int_list("lengths", lengths, low=1)]
        latent = LatentGrid(*video_latent_shape(length, height, width, exact=False)[1:])
        rehyat = ReHyAtCase(chunk_frames, overlap_frames, min(num_blocks, shape.num_layers), causal,
                            forward_mode)
        windows = None
        if context_windows:
            windows = ContextWindowCase(latent_frame_count(context_length),
                                        latent_frame_count(context_overlap))  # as WanContextWindowsManual
        request = ProfileRequest(shape, latent, rehyat, lengths=(latent.frames, *frames),
                                 rates=parse_int_list("uniform_rates", uniform_rates, low=1),
                                 context_windows=windows, linear_accounting=accounting)
        measurer = None
        if measure:
            device = str(model.load_device)

            def measurer(key, case, grid):
                runner = comfy_runner(model, case, grid, text_len=shape.text_len)
                try:
                    return measure_runner(runner, device=device, repeats=repeats)
                finally:
                    runner.cleanup()

        report = profile(request, measure=measurer)
        report["memory_plan"], plan_table = profile_memory_plan(
            shape, width=width, height=height, video_frames=length, chunk_frames=chunk_frames,
            overlap_frames=overlap_frames, gpu_memory_gib=gpu_memory_gib, weights=weights, steps=steps,
            cfg=cfg)
        image = torch.from_numpy(figure_to_array(summary_figure(report))).unsqueeze(0)  # (1, H, W, 3)
        table = format_table(report) + "\n\nmemory plan (python -m rehyat plan)\n" + plan_table
        return io.NodeOutput(image, table, json.dumps(report, indent=2))


NODES = [ReHyAtProfile]
