"""Smoke test of ``benchmarks/sampler.py --tiny``: the report's structure (never its timings).

Runs the real benchmark end to end — real ComfyUI, the pack's chunked sampler, ComfyUI core's
WanContextWindowsManual, one subprocess per case — on a 1-head, 128-wide Wan at 32×48 pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_support import comfy_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "sampler.py"
FRAMES = (9, 13)  # video frames → 3 and 4 latent frames (Tc = 3: one chunk, then a partial second)
CASE_KEYS = {
    "case": str, "video_frames": int, "latent_frames": int, "tokens": int, "steps": int, "seconds": float,
    "seconds_per_step": float, "baseline_mib": float, "peak_rss_mib": float, "working_mib": float,
    "latent_mib": float, "flops_per_step": int, "finite": bool,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    comfy_or_skip()
    out = tmp_path_factory.mktemp("bench") / "sampler.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--frames", *map(str, FRAMES), "--softmax-max-frames", "9",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == data
    return data


def test_report_sections_and_config(report: dict) -> None:
    for key in ("config", "memory_method", "timing_method", "windows_node", "cases", "summary", "machine",
                "python", "cpu_count"):
        assert key in report, key
    cfg = report["config"]
    assert cfg["video_frames"] == list(FRAMES)
    assert cfg["cases"] == ["streaming", "sweep", "softmax", "windows"]
    assert (cfg["dim"], cfg["heads"], cfg["head_dim"], cfg["layers"]) == (128, 1, 128, 2)
    assert cfg["latent_hw"] == [4, 6] and cfg["tokens_per_frame"] == 6
    assert (cfg["window_frames"], cfg["window_overlap"], cfg["cfg"], cfg["steps"]) == (9, 4, 5.0, 2)
    assert "WanContextWindowsManual" in report["windows_node"]


def test_one_entry_per_case_and_length(report: dict) -> None:
    got = [(c["case"], c["video_frames"]) for c in report["cases"]]
    assert got == [("streaming", 9), ("streaming", 13), ("sweep", 9), ("sweep", 13), ("softmax", 9),
                   ("windows", 9), ("windows", 13)]  # softmax stops at --softmax-max-frames
    for case in report["cases"]:
        for key, kind in CASE_KEYS.items():
            assert isinstance(case[key], kind), (case["case"], key, case[key])
        assert case["latent_frames"] == (case["video_frames"] - 1) // 4 + 1
        assert case["tokens"] == case["latent_frames"] * 6
        assert case["finite"] and case["flops_per_step"] > 0
        chunked = case["case"] in ("streaming", "sweep")
        assert isinstance(case["state_store_mib"], float) if chunked else case["state_store_mib"] is None
    by = {(c["case"], c["video_frames"]): c for c in report["cases"]}
    # 9 video frames = one context window: the windows run does the softmax model's work exactly.
    assert by[("windows", 9)]["flops_per_step"] == by[("softmax", 9)]["flops_per_step"]
    assert by[("streaming", 13)]["state_store_mib"] > 0  # two chunks: states carried between them


def test_summary_is_derived_from_the_cases(report: dict) -> None:
    summary = report["summary"]
    by = {(c["case"], c["video_frames"]): c for c in report["cases"]}
    assert [row["video_frames"] for row in summary["per_length"]] == list(FRAMES)
    for row in summary["per_length"]:
        f = row["video_frames"]
        stream, windows = by[("streaming", f)], by[("windows", f)]
        assert row["streaming_working_mib"] == stream["working_mib"]
        assert row["speedup_streaming_vs_windows"] == pytest.approx(
            windows["seconds_per_step"] / stream["seconds_per_step"])
        ratio = windows["flops_per_step"] / stream["flops_per_step"]
        assert row["flop_ratio_windows_vs_streaming"] == pytest.approx(ratio)
        assert row["efficiency_vs_flop_ratio"] == pytest.approx(row["speedup_streaming_vs_windows"] / ratio)
        assert isinstance(row["streaming_below_windows_memory"], bool)
        assert ("softmax_working_mib" in row) == (f == 9)
    for key, kind in (("streaming_working_spread", float), ("sweep_working_spread", float),
                      ("streaming_flat_within_10_percent", bool), ("sweep_growth_mib", float),
                      ("sweep_growth_in_latents", float), ("streaming_below_windows_at_every_length", bool),
                      ("longest_speedup_vs_windows", float), ("longest_meets_1_6x", bool)):
        assert isinstance(summary[key], kind), key


def test_extend_case_reports_per_frame_cost_and_identity(tmp_path: Path) -> None:
    """The opt-in ``extend`` case: a saved clip extended vs one run, in one process (no timing asserted)."""
    comfy_or_skip()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--cases", "extend", "--frames", "21", "--no-flops"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (case,) = report["cases"]
    shape = (case["case"], case["latent_frames"], case["first_frames"], case["extra_frames"])
    assert shape == ("extend", 6, 3, 3)
    assert case["equal_to_one_run"] is True and case["finite"] and case["resume_file_mib"] > 0
    assert case["per_frame_ratio"] == pytest.approx(case["extend_seconds_per_frame"]
                                                    / case["one_run_seconds_per_frame"])
    assert report["summary"]["extend_bit_identical"] is True
