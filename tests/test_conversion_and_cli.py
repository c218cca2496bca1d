"""Block selection, frame grids and the ``python -m rehyat compare`` main job."""

from __future__ import annotations

import json
import math

import pytest

from rehyat import cli
from rehyat.config import ConversionConfig, HybridAttentionConfig
from rehyat.hybrid import FrameGrid


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, tuple(range(30))),
    ({"num_blocks": 3, "placement": "first"}, (0, 1, 2)),
    ({"num_blocks": 3, "placement": "last"}, (27, 28, 29)),
    ({"num_blocks": 15, "placement": "even"}, tuple(range(1, 30, 2))),
    ({"num_blocks": 0}, ()),
    ({"blocks": (5, 2, 9)}, (2, 5, 9)),
])
def test_resolve_blocks(kwargs, expected):
    assert ConversionConfig(**kwargs).resolve_blocks(30) == expected


@pytest.mark.parametrize("count", [1, 7, 20, 25, 29])
def test_even_placement_is_spread_and_includes_the_last_block(count):
    blocks = ConversionConfig(num_blocks=count, placement="even").resolve_blocks(30)
    assert len(blocks) == count and blocks[-1] == 29
    gaps = {b - a for a, b in zip(blocks, blocks[1:], strict=False)}
    assert max(gaps, default=1) - min(gaps, default=1) <= 1


@pytest.mark.parametrize(("kwargs", "total", "pattern"), [
    ({"num_blocks": 31}, 30, r"num_blocks must be in \[0, 30\]"),
    ({"blocks": (3, 30)}, 30, r"blocks \[30\] out of range: the model has blocks 0..29"),
    ({"blocks": (1, 1)}, 30, r"must not repeat"),
    ({"placement": "middle"}, 30, r"placement must be one of"),
    ({"num_blocks": -1}, 30, r"num_blocks must be an integer ≥ 0"),
])
def test_bad_block_selection(kwargs, total, pattern):
    with pytest.raises(ValueError, match=pattern):
        ConversionConfig(**kwargs).resolve_blocks(total)


def test_conversion_config_round_trip():
    cfg = ConversionConfig(blocks=(1, 4), attention=HybridAttentionConfig(chunk_frames=5))
    assert ConversionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_frame_grid():
    grid = FrameGrid(7, 3, 5)
    assert grid.tokens_per_frame == 15 and grid.tokens == 105
    with pytest.raises(ValueError, match=r"FrameGrid.height must be an integer ≥ 1; got 0"):
        FrameGrid(7, 0, 5)


def test_compare_main_job_reports_matching_forms(capsys):
    assert cli.main(["compare", "--frames", "5", "--height", "2", "--width", "3", "--heads", "2",
                     "--head-dim", "8", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["workload"]["tokens"] == 30
    assert report["max_abs_parallel_vs_recurrent"] < 1e-5
    assert report["gflops"]["rehyat"] > 0 and report["flop_ratio"] > 0
    # Times are reported, never judged (no timing assertion): finite numbers, and the speed-ups are
    # the ratios of the times printed in the same report.
    seconds = report["seconds"]
    assert set(seconds) == {"softmax", "rehyat_parallel", "rehyat_recurrent"}
    assert all(math.isfinite(value) for value in seconds.values())
    for form in ("parallel", "recurrent"):
        assert report["speedup"][form] == pytest.approx(seconds["softmax"] / seconds[f"rehyat_{form}"])


def test_compare_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--frames", "0"])
    assert "--frames must be ≥ 1; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "--chunk-frames", "0"])
    assert "chunk_frames must be an integer ≥ 1" in capsys.readouterr().err


def test_compare_main_job_prints_its_table(capsys):
    assert cli.main(["compare", "--frames", "4", "--height", "2", "--width", "2", "--heads", "2",
                     "--head-dim", "8", "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    assert "ReHyAt vs softmax — 4 latent frames × 4 tokens = 16 tokens, 2 heads × 8, Tc=3, To=1" in table
    for row in ("softmax", "rehyat parallel", "rehyat recurrent", "FLOP ratio softmax/ReHyAt:",
                "max |parallel − recurrent|:", "recurrent state:", "φ parameters per block:"):
        assert row in table
    rec_line = next(line for line in table.splitlines() if line.startswith("rehyat recurrent"))
    columns = rec_line.split()[2:]  # seconds, GFLOP, speed-up: printed numbers, not judged (timing)
    assert len(columns) == 3 and all(math.isfinite(float(x)) for x in columns)
