"""Measured latency and memory (in-process and per-case subprocess), and the plots of a measured profile."""

from __future__ import annotations

import numpy as np
import pytest
from comfy_support import comfy_or_skip, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict

from rehyat.config import FeatureMapConfig
from rehyat.profiling import (
    ContextWindowCase,
    LatentGrid,
    ProfileRequest,
    ReHyAtCase,
    SoftmaxCase,
    UniformHybridCase,
    WanShape,
    comfy_runner,
    figure_to_array,
    format_table,
    measure_runner,
    profile,
    summary_figure,
    wandit_runner,
    write_report,
)

FM = FeatureMapConfig(hidden_dim=8, feature_dim=8)
TINY = WanShape("tiny", dim=48, num_layers=2, num_heads=4, ffn_dim=64, text_len=6, text_dim=32, freq_dim=16)


@pytest.mark.parametrize("case", [SoftmaxCase(), ReHyAtCase(2, 1, form="recurrent", feature_map=FM),
                                  ReHyAtCase(2, 0, converted_blocks=1, feature_map=FM),
                                  ContextWindowCase(3, 1, SoftmaxCase()),
                                  UniformHybridCase(2, feature_map=FM)],
                         ids=lambda c: c.label)
def test_in_process_measurement_times_every_block(case):
    runner = wandit_runner(TINY, case, LatentGrid(5, 4, 4))
    result = measure_runner(runner, repeats=2, warmup=1)
    assert result.step_seconds > 0 and len(result.block_seconds) == 2
    assert all(s > 0 for s in result.block_seconds)
    assert result.peak_memory_mib > 0 and result.working_memory_mib >= 0
    if isinstance(case, ReHyAtCase):
        assert result.converted == ([1] if case.converted_blocks == 1 else [0, 1])
    elif isinstance(case, UniformHybridCase):
        assert result.converted == [0, 1]
    else:
        assert result.converted == []


def test_unrunnable_cases_are_refused_clearly():
    with pytest.raises(ValueError, match="needs every block converted"):
        wandit_runner(TINY, ReHyAtCase(converted_blocks=1, form="recurrent"), LatentGrid(4, 4, 4))
    with pytest.raises(ValueError, match="layers must be in"):
        wandit_runner(TINY, SoftmaxCase(), LatentGrid(4, 4, 4), layers=3)
    with pytest.raises(ValueError, match="repeats"):
        measure_runner(wandit_runner(TINY, SoftmaxCase(), LatentGrid(2, 4, 4)), repeats=0)


def test_measured_profile_plots_and_tables(tmp_path):
    request = ProfileRequest(TINY, LatentGrid(4, 4, 4), ReHyAtCase(2, 1, feature_map=FM), lengths=(2, 4),
                             rates=(2,), context_windows=ContextWindowCase(3, 1), chunk_sweep=(1, 2),
                             overlap_sweep=(0, 1))

    def measure(key, case, latent):
        return measure_runner(wandit_runner(TINY, case, latent), repeats=1, warmup=0)

    report = profile(request, measure=measure)
    for row in report["lengths"]:
        measured = {k for k, v in row["cases"].items() if "measured" in v}
        assert measured == {"softmax", "rehyat", "context_windows", "uniform_hybrid_R2"}
    image = figure_to_array(summary_figure(report))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    files = write_report(report, tmp_path)
    assert all(path.stat().st_size > 0 for path in files.values())
    table = format_table(report)
    assert "MiB" in table and "s " in table


@requires_comfyui
@pytest.mark.parametrize("case", [SoftmaxCase(), ReHyAtCase(2, 1, form="recurrent", feature_map=FM),
                                  ContextWindowCase(3, 1, SoftmaxCase()),
                                  UniformHybridCase(2, feature_map=FM)],
                         ids=lambda c: c.label)
def test_comfyui_model_measures_in_process(case):
    comfy_or_skip()
    patcher = load_tiny_wan_comfy(tiny_wan_state_dict(num_layers=2, seed=0))
    runner = comfy_runner(patcher, case, LatentGrid(5, 4, 4), text_len=6)
    try:
        result = measure_runner(runner, repeats=1)
    finally:
        runner.cleanup()
    assert result.step_seconds > 0 and len(result.block_seconds) == 2
    assert all(s > 0 for s in result.block_seconds)
    assert result.converted == ([0, 1] if isinstance(case, (ReHyAtCase, UniformHybridCase)) else [])


def test_low_precision_runner_keeps_phi_and_patch_embedding_fp32():
    import torch

    runner = wandit_runner(TINY, ReHyAtCase(2, 1, form="recurrent", feature_map=FM), LatentGrid(4, 4, 4),
                           dtype=torch.bfloat16)
    runner.forward()
    block = runner.blocks[0]
    assert block.ffn[0].weight.dtype == torch.bfloat16
    assert block.self_attn.attention.hybrid.feature_maps.phi_q.weight1.dtype == torch.float32
