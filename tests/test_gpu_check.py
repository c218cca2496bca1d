"""``python -m rehyat gpu-check``: the tiny CPU run of every part, the time guard, the report's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from comfy_support import comfyui_dir

from rehyat.gpu_check import PARTS, GpuCheckConfig, tiny_config
from rehyat.gpu_check.correctness import bounds, errors, exact_output, reference_bytes
from rehyat.gpu_check.correctness import summarise as correct_summary
from rehyat.gpu_check.device import device_info
from rehyat.gpu_check.dit import dit_cases
from rehyat.gpu_check.dit import summarise as dit_summary
from rehyat.gpu_check.guard import Deadline, parse_lines, run_guarded
from rehyat.gpu_check.inputs import attention_inputs, feature_maps
from rehyat.gpu_check.sampler import find_comfyui
from rehyat.gpu_check.sampler import summarise as sampler_summary
from rehyat.gpu_check.speed import analytic_flops, build_cases, count_flops
from rehyat.gpu_check.speed import summarise as speed_summary
from rehyat.ops import rehyat_attention_naive

ROOT = Path(__file__).resolve().parent.parent
PINNED = ("device", "op_correct", "op_speed", "dit", "sampler")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rehyat", "gpu-check", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_tiny_cpu_run_writes_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    done = run_cli("--device", "cpu", "--tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(PINNED) <= set(report) and report["tiny"] is True
    assert report["device"]["type"] == "cpu" and report["device"]["torch"] == torch.__version__
    for part in ("op_correct", "op_speed", "dit"):
        assert report[part]["status"] == "ok", (part, report[part]["reason"])
    correct = report["op_correct"]
    assert correct["pass"] is True and correct["checked"] == 4  # bf16, fp16 × parallel, recurrent
    assert {(c["dtype"], c["form"]) for c in correct["cases"]} == {
        (d, f) for d in ("bfloat16", "float16") for f in ("parallel", "recurrent")
    }
    assert all(c["pass"] and c["rms_error"] <= c["rms_bound"] for c in correct["cases"])
    speed = report["op_speed"]
    assert {c["case"] for c in speed["cases"]} == {"softmax", "parallel", "recurrent"}
    assert all(c["counted_flops"] > 0 and c["median_ms"] > 0 for c in speed["cases"])
    assert [r["frames"] for r in speed["per_frames"]] == [6, 9]
    assert "share_of_flop_ratio" in speed["per_frames"][0]["parallel"]
    assert (
        len(report["dit"]["cases"]) == 6 and report["dit"]["per_length"][0]["rehyat_recurrent"]["speedup"] > 0
    )
    sampler = report["sampler"]
    if comfyui_dir() is not None or os.environ.get("REHYAT_REQUIRE_COMFYUI"):
        assert sampler["status"] == "ok", sampler["reason"]
        assert {c["case"] for c in sampler["cases"]} == {"streaming", "context_windows"}
        assert all(c["finite"] for c in sampler["cases"]) and "speedup_streaming_vs_windows" in sampler
    else:
        assert sampler["status"] == "skipped" and "ComfyUI not found" in sampler["reason"]
    assert any("no GPU" in note for note in report["not_measured"])


def test_refuses_an_existing_out_and_bad_options(tmp_path):
    existing = tmp_path / "gpu.json"
    existing.write_text("keep")
    done = run_cli("--device", "cpu", "--tiny", "--out", str(existing))
    assert done.returncode == 2 and "already exists" in done.stderr and existing.read_text() == "keep"
    done = run_cli("--device", "tpu", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--device must be" in done.stderr
    done = run_cli("--device", "cpu", "--parts", "dit,nope", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--parts" in done.stderr


def test_time_guard_stops_a_part_and_keeps_its_finished_cases():
    script = "import json, time; print(json.dumps({'case': {'n': 1}}), flush=True); time.sleep(60)"
    start = time.monotonic()
    outcome = run_guarded([sys.executable, "-c", script], 3.0)
    assert time.monotonic() - start < 30
    assert outcome.status == "skipped" and "time guard" in outcome.reason and outcome.cases == [{"n": 1}]
    failed = run_guarded([sys.executable, "-c", "raise SystemExit('boom')"], 30.0)
    assert failed.status == "error" and "boom" in failed.reason
    assert parse_lines('noise\n{"case": {"a": 1}}\n{"skipped": "late"}\n{bad') == ([{"a": 1}], "late")
    assert Deadline(60).remaining() > 50 and Deadline(0).expired()


def test_cooperative_deadline_skips_remaining_cases():
    from rehyat.gpu_check.correctness import run_cases

    cases = []
    reason = run_cases(tiny_config(), cases.append, Deadline(0))
    assert reason.startswith("time guard") and cases == []


def test_config_round_trip_and_parts():
    config = tiny_config(compile=True)
    assert GpuCheckConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PARTS == ("op_correct", "op_speed", "dit", "sampler")
    full = GpuCheckConfig()
    assert (
        sum(full.budgets.values()) <= 8 * 60
        and full.tokens_per_frame == 1560
        and full.heads * full.head_dim == 1536
    )


def test_exact_output_is_the_naive_form_head_by_head():
    config = tiny_config()
    q, k, v = attention_inputs(config, 4, torch.float32)
    maps = feature_maps(config)
    with torch.inference_mode():
        whole = rehyat_attention_naive(
            q.double(),
            k.double(),
            v.double(),
            phi_q=maps.double().phi_q,
            phi_k=maps.phi_k,
            tokens_per_frame=16,
            chunk_frames=3,
            overlap_frames=1,
        )
    maps = feature_maps(config)
    torch.testing.assert_close(exact_output(q, k, v, maps, config), whole)
    assert errors(whole.float(), whole, v)[0] < 1e-6
    assert bounds()["bfloat16"]["rms_relative"] == 1.5 * 2**-8 and reference_bytes(10) == 5 * 8 * 100
    assert correct_summary([])["pass"] is False


def test_speed_helpers_count_what_the_ops_do():
    config = tiny_config()
    q, k, v = attention_inputs(config, 6, torch.float32)
    cases = build_cases(config)
    assert set(cases) == {"softmax", "parallel", "recurrent"}
    assert count_flops(cases["parallel"], q, k, v, None) == analytic_flops(config, "parallel", 6)
    assert count_flops(cases["softmax"], q, k, v, None) == analytic_flops(config, "softmax", 6)
    rows = speed_summary(
        [
            {"frames": 6, "case": "softmax", "median_ms": 4.0, "counted_flops": 8},
            {"frames": 6, "case": "parallel", "median_ms": 2.0, "counted_flops": 2},
        ]
    )
    assert rows["per_frames"][0]["parallel"] == {
        "speedup": 2.0,
        "flop_ratio": 4.0,
        "share_of_flop_ratio": 0.5,
    }


def test_dit_and_sampler_summaries_and_device():
    assert list(dit_cases(GpuCheckConfig())) == ["softmax", "rehyat_recurrent", "rehyat_parallel_15_blocks"]
    rows = dit_summary(
        [
            {"video_frames": 9, "case": "softmax", "seconds": 2.0, "peak_memory_mib": 10.0},
            {"video_frames": 9, "case": "rehyat_recurrent", "seconds": 1.0, "peak_memory_mib": 5.0},
        ]
    )
    assert rows["per_length"][0]["rehyat_recurrent"] == {"speedup": 2.0, "peak_share_of_softmax": 0.5}
    assert sampler_summary([]) == {}
    assert sampler_summary(
        [
            {"case": "streaming", "seconds": 1.0, "peak_memory_mib": 1.0},
            {"case": "context_windows", "seconds": 2.0, "peak_memory_mib": 4.0},
        ]
    ) == {"speedup_streaming_vs_windows": 2.0, "peak_share_streaming_vs_windows": 0.25}
    assert (find_comfyui() is not None) == (comfyui_dir() is not None)
    assert device_info("cpu")["type"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda"):
            device_info("cuda")
