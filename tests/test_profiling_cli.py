"""``python -m rehyat profile``: the pinned JSON, files and plots of a short run, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rehyat.cli import main

ROOT = Path(__file__).resolve().parent.parent
PINNED = ["profile", "--preset", "wan2.1-1.3b", "--latent", "21x30x52", "--chunk-frames", "3",
          "--overlap-frames", "1", "--analytic-only", "--json"]
TINY = ["--dim", "64", "--heads", "4", "--ffn-dim", "96", "--layers", "2", "--text-len", "8"]


def test_pinned_command_prints_one_json_object_with_the_pinned_entries():
    proc = subprocess.run([sys.executable, "-m", "rehyat", *PINNED], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    report = json.loads(proc.stdout)  # the whole stdout is one JSON object
    for key in ("softmax", "rehyat"):
        entry = report[key]
        assert entry["attention_tflops"] > 0 and entry["block_tflops"] > entry["attention_tflops"]
    assert report["rehyat"]["attention_tflops"] < report["softmax"]["attention_tflops"]
    config = report["rehyat"]["config"]
    assert config["chunk_frames"] == 3 and config["overlap_frames"] == 1
    assert report["latent"]["tokens_per_frame"] == 30 * 52  # 480×832 px: the paper's 21×30×52


def test_analytic_run_writes_json_table_and_plots(tmp_path, capsys):
    assert main(["profile", "--preset", "wan2.1-14b", "--latent", "21x30x52", "--lengths", "21,41",
                 "--accounting", "paper", "--analytic-only", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "softmax" in table and "uniform hybrid R=2" in table and "context windows 21/4" in table
    assert (tmp_path / "profile.txt").read_text().strip() == table.strip()
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["linear_accounting"] == "paper" and len(report["lengths"]) == 2
    for name in ("lengths.png", "chunk_sweep.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measured_run_reports_latency_and_memory_per_case(tmp_path, capsys):
    assert main(["profile", *TINY, "--latent", "4x3x3", "--chunk-frames", "2", "--rates", "2",
                 "--no-context-windows", "--measure-layers", "1", "--repeats", "1", "--threads", "1",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cases = report["lengths"][0]["cases"]
    for key in ("softmax", "rehyat"):
        measured = cases[key]["measured"]
        assert measured["step_seconds"] > 0 and len(measured["block_seconds"]) == 1
        assert measured["peak_memory_mib"] > 0 and measured["layers"] == 1 and measured["device"] == "cpu"
    uniform = cases["uniform_hybrid_R2"]["measured"]  # rehyat.ops.uniform_hybrid, every block
    assert uniform["step_seconds"] > 0 and uniform["converted"] == [0]
    assert cases["rehyat"]["measured"]["converted"] == [0]


def test_paper_comparison_prints_the_markdown_tables(capsys):
    assert main(["profile", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "| 3 | 4.30 | 4.297 |" in out and "### Fig. 4" in out and "### Table 8" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--latent", "0x1x1"], "--latent: latent frames must be an integer ≥ 1; got 0"),
    (["--latent", "21x30"], "--latent"),
    (["--chunk-frames", "0"], "chunk_frames (Tc) must be an integer ≥ 1; got 0"),
    (["--overlap-frames", "-1"], "overlap_frames (To)"),
    (["--converted-blocks", "31"], "converted_blocks must be in [0, 30]"),
    (["--rates", "2,0"], "rate (R)"),
    (["--window-frames", "4", "--window-overlap", "4"], "--window-frames / --window-overlap"),
    (["--preset", "wan9"], "--preset: preset must be one of"),
    (["--form", "recurrent", "--non-causal"], "needs causal=True"),
    (["--layers", "0"], "num_layers must be an integer ≥ 1"),
])
def test_bad_options_are_usage_errors_naming_the_parameter(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["profile", *argv, "--analytic-only"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_measure_layers_out_of_range_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["profile", *TINY, "--measure-layers", "3"])
    assert "--measure-layers must be in [1, 2]; got 3" in capsys.readouterr().err


def test_docs_compute_holds_the_current_paper_tables():
    from rehyat.profiling.paper import format_paper_comparison

    assert format_paper_comparison() in (ROOT / "docs" / "compute.md").read_text()
