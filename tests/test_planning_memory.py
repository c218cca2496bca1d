"""The planner's working-memory accounting against CPU memory measurements.

Tolerance: the planned working memory of one evaluation is within ±15 % of the measured one (CPU,
fp32, fused softmax attention, process RSS high-water mark with MALLOC_MMAP_THRESHOLD_ so RSS follows
live tensors). Two sources: the CPU benchmark figures recorded in README.md (benchmarks/dit.py:
2-block Wan of width 1536 through real ComfyUI at 16×16 latent; benchmarks/sampler.py: cfg 5, i.e.
batch 2, 320×480), and a live measurement of the pure-PyTorch WanDiT in fresh processes
(:func:`rehyat.profiling.measure_in_subprocess`).
"""

from __future__ import annotations

import pytest

from rehyat.planning.memory import (
    block_activation_bytes,
    evaluation_memory,
    evaluation_state_bytes,
    output_bytes,
    rehyat_scratch_bytes,
    text_bytes,
)
from rehyat.profiling import (
    ContextWindowCase,
    LatentGrid,
    MeasureSpec,
    ReHyAtCase,
    SoftmaxCase,
    WanShape,
    measure_in_subprocess,
)
from rehyat.streaming import state_store_bytes

TOLERANCE = 0.15
MIB = 2**20
BENCH_SHAPE = WanShape("bench", dim=1536, num_layers=2, num_heads=12, ffn_dim=8960)
# README.md, "Benchmarks": benchmarks/dit.py working MiB at 21 / 41 / 81 / 161 latent frames (16×16 latent).
DIT_BENCH = {21: (130.0, 42.7), 41: (242.0, 43.4), 81: (471.0, 43.9), 161: (918.0, 45.0)}


def planned_mib(shape, case, latent, batch=1):
    return evaluation_memory(shape, case, latent, batch=batch, element_size=4).total / MIB


@pytest.mark.parametrize("frames", sorted(DIT_BENCH))
def test_matches_the_recorded_dit_benchmark(frames):
    softmax, recurrent = DIT_BENCH[frames]
    latent = LatentGrid(frames, 16, 16)
    assert planned_mib(BENCH_SHAPE, SoftmaxCase(), latent) == pytest.approx(softmax, rel=TOLERANCE)
    planned = planned_mib(BENCH_SHAPE, ReHyAtCase(form="recurrent"), latent)
    assert planned == pytest.approx(recurrent, rel=TOLERANCE)


def test_matches_the_recorded_sampler_benchmark_at_81_frames():
    """benchmarks/sampler.py at 81 frames (21 latent, 40×60 latent, cfg batch 2): stock KSampler 2243 MiB,
    context windows 2242 MiB (one 81-frame window) — the evaluation dominates at this length."""
    latent = LatentGrid(21, 40, 60)
    assert planned_mib(BENCH_SHAPE, SoftmaxCase(), latent, batch=2) == pytest.approx(2243, rel=TOLERANCE)
    windows = planned_mib(BENCH_SHAPE, ContextWindowCase(21, 4), latent, batch=2)
    assert windows == pytest.approx(2242, rel=TOLERANCE)


@pytest.mark.parametrize("case", [SoftmaxCase(), ReHyAtCase(form="recurrent")], ids=["softmax", "recurrent"])
def test_matches_a_live_cpu_measurement(case):
    shape = WanShape("probe", dim=512, num_layers=2, num_heads=4, ffn_dim=2048, text_len=16, text_dim=256)
    spec = MeasureSpec(shape.to_dict(), case.to_dict(), [16, 32, 32], layers=2, repeats=1, warmup=1,
                       threads=1)
    measured = measure_in_subprocess(spec, timeout=600)
    assert planned_mib(shape, case, LatentGrid(16, 32, 32)) == pytest.approx(measured.working_memory_mib,
                                                                             rel=TOLERANCE)


def test_parts_scale_as_stated():
    shape = BENCH_SHAPE
    assert block_activation_bytes(shape, 200, batch=2, element_size=2) == 2 * block_activation_bytes(
        shape, 100, batch=2, element_size=2)
    # FFN phase dominates Wan2.1-1.3B: (2D + D + 2F)·e + 8d per token
    assert block_activation_bytes(shape, 1, batch=1, element_size=2) == (3 * 1536 + 2 * 8960) * 2 + 8 * 128
    assert text_bytes(shape, batch=1, element_size=2) == 512 * (4096 + 3 * 1536) * 2
    assert output_bytes(shape, 10, batch=1, element_size=2) == 2 * 10 * 16 * 4 * 2
    recurrent, parallel = ReHyAtCase(form="recurrent"), ReHyAtCase(form="parallel")
    assert rehyat_scratch_bytes(shape, recurrent, 100, batch=1, element_size=2) > rehyat_scratch_bytes(
        shape, parallel, 100, batch=1, element_size=2)
    assert evaluation_state_bytes(shape, recurrent, 100, batch=2, element_size=2) == state_store_bytes(
        evaluations=1, conditionings=1, batch=2, blocks=2, heads=12, head_dim=128, feature_dim=256,
        overlap_frames=1, tokens_per_frame=100, overlap_bytes_per_element=2)


def test_recurrent_is_flat_and_softmax_linear_in_length():
    short, long = LatentGrid(21, 60, 104), LatentGrid(121, 60, 104)
    rec = [evaluation_memory(BENCH_SHAPE, ReHyAtCase(form="recurrent"), g).total for g in (short, long)]
    soft = [evaluation_memory(BENCH_SHAPE, SoftmaxCase(), g).total for g in (short, long)]
    assert rec[1] < 1.1 * rec[0]
    assert soft[1] > 5 * soft[0]
    windows = [evaluation_memory(BENCH_SHAPE, ContextWindowCase(21, 4), g).total for g in (short, long)]
    assert windows[0] == windows[1] == soft[0]
    with pytest.raises(ValueError, match="batch"):
        evaluation_memory(BENCH_SHAPE, SoftmaxCase(), short, batch=0)
