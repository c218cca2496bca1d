"""The profiler's analytic FLOPs: equal to torch's flop counter on reduced-depth real models (the
pure-PyTorch WanDiT and ComfyUI's WanModel), ComfyUI's context-window schedule, the paper's numbers."""

from __future__ import annotations

import pytest
import torch
from comfy_support import comfy_or_skip, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from torch.utils.flop_counter import FlopCounterMode

from rehyat.config import FeatureMapConfig
from rehyat.flops import register_cpu_flash_flop_formula
from rehyat.models.wan import WanDiT, WanDiTConfig
from rehyat.models.wan_rehyat import convert, forward_recurrent
from rehyat.profiling import (
    ContextWindowCase,
    LatentGrid,
    ProfileRequest,
    ReHyAtCase,
    SoftmaxCase,
    UniformHybridCase,
    WanShape,
    block_flops,
    flops_entry,
    get_preset,
    model_flops,
    outside_block_flops,
    parse_latent,
    profile,
    shape_of_wan_module,
)
from rehyat.profiling.cases import case_from_dict
from rehyat.profiling.runners import conversion_for, window_latents

FM = FeatureMapConfig(hidden_dim=8, feature_dim=6)
TINY = WanShape("tiny", dim=48, num_layers=3, num_heads=4, ffn_dim=80, text_len=7, text_dim=24, freq_dim=16)
LATENT = LatentGrid(7, 6, 5)  # odd width: padded like ComfyUI (3×3 tokens per frame)


def counted(fn) -> int:
    register_cpu_flash_flop_formula()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tiny_wandit(case) -> WanDiT:
    torch.manual_seed(0)
    model = WanDiT(WanDiTConfig(dim=TINY.dim, ffn_dim=TINY.ffn_dim, num_heads=TINY.num_heads,
                                num_layers=TINY.num_layers, text_dim=TINY.text_dim, freq_dim=TINY.freq_dim))
    inner = case.inner if isinstance(case, ContextWindowCase) else case
    if isinstance(inner, ReHyAtCase):
        convert(model, conversion_for(inner, TINY.num_layers, TINY.num_layers))
    return model


def run_wandit(model, case, latent):
    inner = case.inner if isinstance(case, ContextWindowCase) else case
    recurrent = isinstance(inner, ReHyAtCase) and inner.form == "recurrent"
    context, t = torch.randn(1, TINY.text_len, TINY.text_dim), torch.tensor([500.0])
    for grid in window_latents(case, latent):
        x = torch.randn(1, 16, grid.frames, grid.height, grid.width)
        forward_recurrent(model, x, t, context) if recurrent else model(x, t, context)


CASES = [
    SoftmaxCase(),
    ReHyAtCase(2, 1, feature_map=FM),
    ReHyAtCase(3, 0, converted_blocks=2, feature_map=FM),
    ReHyAtCase(2, 1, causal=False, feature_map=FM),
    ReHyAtCase(2, 1, form="recurrent", feature_map=FM),
    ReHyAtCase(7, 2, form="recurrent", feature_map=FM),  # one chunk: the softmax model
    ContextWindowCase(4, 1, SoftmaxCase()),
    ContextWindowCase(5, 2, ReHyAtCase(2, 1, feature_map=FM)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_analytic_whole_dit_flops_equal_the_flop_counter_on_wandit(case):
    model = tiny_wandit(case)
    assert counted(lambda: run_wandit(model, case, LATENT)) == model_flops(case, TINY, LATENT).total


def test_recurrent_extras_are_the_text_projections_and_the_final_state():
    parallel, recurrent = ReHyAtCase(3, 1, feature_map=FM), ReHyAtCase(3, 1, form="recurrent", feature_map=FM)
    gap = model_flops(recurrent, TINY, LATENT).total - model_flops(parallel, TINY, LATENT).total
    chunks, keys = 3, 1 * 9 * TINY.num_heads  # frame 6 leaves the last window (start 5) only in the state
    text_kv = (chunks - 1) * 2 * 2 * TINY.text_len * TINY.dim ** 2
    absorb = (2 * (12 * 8 + 8 * 6) + 2 * 6 * 13) * keys
    assert gap == TINY.num_layers * (text_kv + absorb)


@requires_comfyui
@pytest.mark.parametrize("case", [SoftmaxCase(), ReHyAtCase(2, 1, feature_map=FM),
                                  ReHyAtCase(2, 1, converted_blocks=1, feature_map=FM),
                                  ReHyAtCase(3, 1, form="recurrent", feature_map=FM)], ids=lambda c: c.label)
def test_analytic_flops_equal_the_flop_counter_on_comfyui_wan(case):
    comfy_or_skip()
    from rehyat.integrations.comfyui_wan import patch_comfy_wan

    patcher = load_tiny_wan_comfy(tiny_wan_state_dict(num_layers=2, seed=0))
    shape = shape_of_wan_module(patcher.get_model_object("diffusion_model"), text_len=5)
    latent = LatentGrid(5, 6, 4)
    if isinstance(case, ReHyAtCase):
        patcher = patch_comfy_wan(patcher, conversion_for(case, 2, 2), forward_mode=case.form)
    x, context = torch.randn(1, 16, 5, 6, 4), torch.randn(1, 5, 4096)
    patcher.patch_model(device_to=patcher.load_device)
    try:
        total = counted(lambda: patcher.model.apply_model(x, torch.tensor([0.5]), c_crossattn=context,
                                                          transformer_options={"wrappers": patcher.wrappers}))
    finally:
        patcher.unpatch_model(device_to=patcher.offload_device)
    assert total == model_flops(case, shape, latent).total


@requires_comfyui
@pytest.mark.parametrize(("frames", "length", "overlap"), [(21, 21, 4), (41, 21, 4), (81, 21, 4), (30, 8, 3),
                                                           (9, 4, 0), (5, 21, 4)])
def test_context_windows_follow_comfyuis_static_standard_schedule(frames, length, overlap):
    comfy_or_skip()
    import comfy.context_windows as cw

    handler = cw.IndexListContextHandler(cw.ContextSchedules.STATIC_STANDARD, cw.ContextFuseMethods.PYRAMID,
                                         context_length=length, context_overlap=overlap)
    expected = [(w[0], w[-1] + 1) for w in cw.create_windows_static_standard(frames, handler, {})]
    assert ContextWindowCase(length, overlap).windows(frames) == expected


def test_block_accounting_is_the_stated_sum():
    shape, p, n = get_preset("wan2.1-1.3b"), 1560, 21 * 1560
    block = block_flops(SoftmaxCase(), shape, 21, p)
    d, f, text = 1536, 8960, 512
    assert block.attention_core.total == 4 * n * n * d
    assert block.projections == 8 * n * d * d
    assert block.cross_attention == 4 * n * d * d + 4 * text * d * d + 4 * n * text * d
    assert block.ffn == 4 * n * d * f
    assert block.total == block.attention + block.cross_attention + block.ffn
    assert outside_block_flops(shape, 21, p) == (2 * n * d * 64 + 2 * text * (4096 * d + d * d)
                                                 + 2 * (256 * d + d * d + 6 * d * d) + 2 * n * d * 64)


PAPER_TABLE6 = {1: 3.87, 2: 4.04, 3: 4.30, 5: 4.82}


@pytest.mark.parametrize(("tc", "expected"), PAPER_TABLE6.items())
def test_table6_block_tflops_reproduce_with_the_paper_accounting(tc, expected):
    shape, latent = get_preset("wan2.1-1.3b"), LatentGrid(21, 60, 104)  # 480×832, 81 frames
    case = ReHyAtCase(tc, 1, converted_blocks=25)
    entry = flops_entry(case, shape, latent, "paper")
    assert entry["block_tflops"] == pytest.approx(expected, abs=0.01)
    ours = flops_entry(case, shape, latent, "incremental")["block_tflops"]
    assert expected - 0.25 < ours < expected  # rehyat.ops does less linear-part work


def test_fig4_claims():
    shape, latent = get_preset("wan2.1-1.3b"), LatentGrid(21, 60, 104)
    report = profile(ProfileRequest(shape, latent, ReHyAtCase(3, 1), context_windows=None,
                                    linear_accounting="paper"))
    softmax = report["softmax"]["attention_tflops"]
    assert softmax == pytest.approx(7.21, abs=0.01)
    tc3_to1 = report["rehyat"]["attention_tflops"]
    assert report["uniform_hybrid_R2"]["attention_tflops"] / tc3_to1 == pytest.approx(2.0, abs=0.05)
    best = min(r["attention_tflops"] for rows in report["chunk_sweep"].values() for r in rows)
    assert softmax / best > 4  # "up to 4×" — and more at Tc=1, To=0


def test_latent_parsing_and_sizes():
    latent = parse_latent("21x60x104")
    assert latent.to_dict() == {"frames": 21, "height": 60, "width": 104, "tokens_per_frame": 1560,
                                "tokens": 32760, "video_frames": 81, "pixels": "480x832"}
    assert parse_latent("21×30×52").tokens_per_frame() == 15 * 26
    for bad, name in (("0x1x1", "latent frames"), ("21x0x52", "latent height"), ("21x30", "T x H x W"),
                      ("a", "T x H x W")):
        with pytest.raises(ValueError, match=name):
            parse_latent(bad)


def test_cases_validate_and_round_trip():
    for case in CASES + [UniformHybridCase(4, 20, FM)]:
        assert case_from_dict(case.to_dict()) == case
    for kwargs, name in ((dict(chunk_frames=0), "chunk_frames"), (dict(overlap_frames=-1), "overlap_frames"),
                         (dict(converted_blocks=-2), "converted_blocks"), (dict(form="chunked"), "form"),
                         (dict(causal=False, form="recurrent"), "causal")):
        with pytest.raises(ValueError, match=name):
            ReHyAtCase(**kwargs)
    with pytest.raises(ValueError, match="rate"):
        UniformHybridCase(0)
    with pytest.raises(ValueError, match="overlap_frames"):
        ContextWindowCase(4, 4)
    with pytest.raises(ValueError, match="converted_blocks must be in"):
        model_flops(ReHyAtCase(converted_blocks=31), get_preset("wan2.1-1.3b"), LATENT)
    with pytest.raises(ValueError, match="preset"):
        get_preset("wan2.2")
    with pytest.raises(ValueError, match="num_heads"):
        WanShape("bad", dim=100, num_layers=1, num_heads=3, ffn_dim=10)


def test_request_validates_its_sweeps():
    shape = get_preset("wan2.1-14b")
    with pytest.raises(ValueError, match="chunk_frames"):
        ProfileRequest(shape, LATENT, chunk_sweep=(0, 1))
    with pytest.raises(ValueError, match="rate"):
        ProfileRequest(shape, LATENT, rates=(2, 0))
    with pytest.raises(ValueError, match="latent frames"):
        ProfileRequest(shape, LATENT, lengths=(0,))
    with pytest.raises(ValueError, match="linear_accounting"):
        ProfileRequest(shape, LATENT, linear_accounting="exact")
    with pytest.raises(ValueError, match="converted_blocks must be in"):
        ProfileRequest(shape, LATENT, ReHyAtCase(converted_blocks=41))


def test_profile_report_has_every_case_and_the_sweeps():
    report = profile(ProfileRequest(get_preset("wan2.1-14b"), LatentGrid(21, 60, 104), lengths=(21, 41, 81)))
    assert {"softmax", "rehyat", "uniform_hybrid_R2", "uniform_hybrid_R4", "uniform_hybrid_R8",
            "context_windows"} <= set(report)
    assert [r["video_frames"] for r in report["lengths"]] == [81, 161, 321]
    soft = [r["cases"]["softmax"]["model_tflops"] for r in report["lengths"]]
    rehyat = [r["cases"]["rehyat"]["model_tflops"] for r in report["lengths"]]
    windows = [r["cases"]["context_windows"]["model_tflops"] for r in report["lengths"]]
    assert rehyat[2] / rehyat[0] < 4.2  # 4× the tokens: ~linear
    assert soft[2] / soft[0] > 9  # quadratic attention dominates
    assert windows[0] == soft[0] and windows[2] < soft[2]
    assert sorted(report["chunk_sweep"]) == ["To=0", "To=1", "To=2"]
    assert [r["chunk_frames"] for r in report["chunk_sweep"]["To=1"]] == list(range(1, 8))
