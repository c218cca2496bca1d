"""``python -m rehyat plan``: models, weight formats, per-method peaks, the choice, the clip state's size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from rehyat.cli import main
from rehyat.commands.plan import parse_size
from rehyat.models.wan import WanDiT, WanDiTConfig
from rehyat.ops import RecurrentState
from rehyat.planning import PLAN_MODELS, PlanRequest, format_plan, get_plan_model, plan, plan_model_for_shape
from rehyat.planning.models import dit_parameter_count
from rehyat.planning.plan import clip_state_file_bytes
from rehyat.planning.profile_section import profile_memory_plan
from rehyat.planning.weights import phi_bytes, weight_bytes
from rehyat.profiling import WanShape, get_preset
from rehyat.streaming import state_store_bytes
from rehyat.streaming.accounting import conditionings_per_evaluation, evaluations_per_step

GIB = 2**30


def request(**overrides):
    values = dict(model=get_plan_model("wan2.1-1.3b"), gpu_memory_gib=12.0, weights="fp8", width=832,
                  height=480, frames=481, steps=30, cfg=5.0)
    values.update(overrides)
    return PlanRequest(**values)


def test_parameter_counts_are_the_module_trees():
    small = WanShape("s", dim=64, num_layers=2, num_heads=2, ffn_dim=96, text_dim=32)
    model = WanDiT(WanDiTConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, text_dim=32))
    assert dit_parameter_count(small) == sum(p.numel() for p in model.parameters())
    counts = {name: m.parameters / 1e9 for name, m in PLAN_MODELS.items()}
    assert counts["wan2.1-1.3b"] == pytest.approx(1.419, abs=0.001)
    assert counts["wan2.1-14b"] == pytest.approx(14.29, abs=0.01)
    assert counts["wan2.2-5b"] == pytest.approx(5.0, abs=0.01)
    assert PLAN_MODELS["wan2.2-a14b"].experts == 2 and PLAN_MODELS["wan2.2-5b"].pixels_per_token == 32
    assert plan_model_for_shape(get_preset("wan2.1-1.3b")).parameters == PLAN_MODELS["wan2.1-1.3b"].parameters
    with pytest.raises(ValueError, match="--model must be one of"):
        get_plan_model("wan3")


def test_weight_formats():
    assert weight_bytes(1000, "bf16") == 2000 and weight_bytes(1000, "fp8") == 1000
    assert weight_bytes(32, "q8") == 34 and weight_bytes(32, "q4") == 18  # GGUF Q8_0 / Q4_0 blocks
    with pytest.raises(ValueError, match="--weights must be one of"):
        weight_bytes(1, "int3")
    shape = get_preset("wan2.1-1.3b")
    from rehyat.config import FeatureMapConfig

    assert phi_bytes(shape, FeatureMapConfig()) == pytest.approx(30 * 2.37e6 * 4, rel=0.01)


def test_sampler_accounting_shared_with_the_node():
    assert evaluations_per_step("euler") == 1 and evaluations_per_step("heun") == 2
    assert conditionings_per_evaluation(5.0) == 2 and conditionings_per_evaluation(1.0) == 1
    assert conditionings_per_evaluation(5.0, {"positive": 2, "negative": 1}) == 3
    assert conditionings_per_evaluation(1.0, {"positive": 2, "negative": 1}) == 2


def test_plan_peaks_choice_and_state_size():
    result = plan(request())
    methods = {(r["method"], r["state_device"]): r for r in result["methods"]}
    assert set(methods) >= {("softmax", None), ("context_windows", None), ("rehyat_streaming", "gpu"),
                            ("rehyat_streaming", "cpu"), ("rehyat_sweep", None)}
    store = state_store_bytes(evaluations=30, conditionings=2, batch=1, blocks=30, heads=12, head_dim=128,
                              feature_dim=256, overlap_frames=1, tokens_per_frame=1560,
                              overlap_bytes_per_element=2)
    assert result["state_store_bytes"] == store
    assert methods[("rehyat_streaming", "gpu")]["parts"]["state_store"] == store
    assert methods[("rehyat_streaming", "cpu")]["host_state_bytes"] == store
    streaming_cpu = methods[("rehyat_streaming", "cpu")]["gpu_peak_bytes"]
    assert streaming_cpu < methods[("context_windows", None)]["gpu_peak_bytes"]
    assert streaming_cpu < methods[("softmax", None)]["gpu_peak_bytes"]
    assert result["choice"]["method"] == "rehyat_streaming" and result["choice"]["state_device"] == "cpu"
    assert result["clip"]["latent"]["frames"] == 121 and result["clip"]["conditionings"] == 2
    # short clip on a big GPU: the original model
    assert plan(request(frames=81, gpu_memory_gib=80.0))["choice"]["method"] == "softmax"
    nothing = plan(request(gpu_memory_gib=1.0, weights="bf16"))
    assert nothing["choice"]["method"] is None and "nothing fits" in nothing["choice"]["reason"]
    assert "choice:" in format_plan(result) and "rehyat_streaming" in format_plan(result)


def test_unbatched_cfg_when_batched_does_not_fit():
    big = plan(request(frames=81, gpu_memory_gib=80.0))
    small = plan(request(frames=81, gpu_memory_gib=4.0))
    softmax = [big["methods"][0], small["methods"][0]]
    assert softmax[0]["cfg_batched"] and not softmax[1]["cfg_batched"]
    assert softmax[1]["gpu_peak_bytes"] < softmax[0]["gpu_peak_bytes"]


def test_clip_state_file_size_matches_safetensors(tmp_path):
    heads, d, dp, p, blocks = 2, 16, 8, 24, 3
    tensors = {}
    for index in range(blocks):
        state = RecurrentState(kv=torch.zeros(1, heads, dp, d), k_sum=torch.zeros(1, heads, dp),
                               k_overlap=torch.zeros(1, heads, p, d, dtype=torch.bfloat16),
                               v_overlap=torch.zeros(1, heads, p, d, dtype=torch.bfloat16), frames_seen=3)
        tensors.update(state.to_tensors(prefix=f"e0.c0.b{index}."))
    path = tmp_path / "state.safetensors"
    save_file(tensors, str(path))
    store = state_store_bytes(evaluations=1, conditionings=1, batch=1, blocks=blocks, heads=heads,
                              head_dim=d, feature_dim=dp, overlap_frames=1, tokens_per_frame=p,
                              overlap_bytes_per_element=2)
    actual = path.stat().st_size
    assert store < actual <= clip_state_file_bytes(store, blocks)


def test_request_errors_name_the_option():
    with pytest.raises(ValueError, match="--frames must be 1 \\+ 4"):
        request(frames=80)
    with pytest.raises(ValueError, match="--size width must be a multiple of 32"):
        request(model=get_plan_model("wan2.2-5b"), width=848)
    with pytest.raises(ValueError, match="--gpu-memory"):
        request(gpu_memory_gib=0)
    assert parse_size("832x480") == (832, 480)
    with pytest.raises(ValueError, match="--size must be WIDTHxHEIGHT"):
        parse_size("832")


def test_cli_prints_json_and_table(capsys):
    args = ["plan", "--gpu-memory", "24", "--model", "wan2.2-5b", "--weights", "q8", "--size", "1280x704",
            "--frames", "121", "--steps", "20", "--cfg", "5"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["name"] == "wan2.2-5b" and report["clip"]["latent"]["tokens_per_frame"] == 880
    assert main(args) == 0 and "choice:" in capsys.readouterr().out
    bad = subprocess.run([sys.executable, "-m", "rehyat", *args[:-2], "--cfg", "-1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--cfg" in bad.stderr.strip().splitlines()[-1]


def test_profile_node_section_is_the_plan():
    result, table = profile_memory_plan(get_preset("wan2.1-1.3b"), width=832, height=480, video_frames=483,
                                        chunk_frames=3, overlap_frames=1, gpu_memory_gib=12.0, weights="fp8",
                                        steps=30, cfg=5.0)
    assert result["methods"] == plan(request())["methods"]  # 483 frames floors to 481
    assert table == format_plan(result)
