"""Stage-1 φ distillation core: run folders, data-parallel helpers, plots, options, sampler, capture,
students and the distiller on the pure-PyTorch WanDiT (tiny, real Wan key names)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from comfy_support import tiny_wan_state_dict
from thread_support import one_thread

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.hybrid import FrameGrid, HybridAttention, ReHyAtRun
from rehyat.models.wan import WanDiT
from rehyat.ops import rehyat_attention_naive
from rehyat.training import (
    DistributedContext,
    RunFolder,
    all_reduce_mean_,
    average_gradients_,
    init_distributed,
    loss_curve_image,
    loss_curve_png,
    shard,
    validate_run_name,
)
from rehyat.training.capture import CapturedAttention, WanDiTCapture, check_blocks
from rehyat.training.distill import Distiller, run_distillation, run_identity
from rehyat.training.distributed import env_context
from rehyat.training.options import DistillOptions, TeacherSampling, check_clip_length, min_latent_frames
from rehyat.training.report import format_report
from rehyat.training.runs import load_checkpoint, tensors_digest
from rehyat.training.sampling import euler_ancestral_step, flow_sigmas
from rehyat.training.student import BlockStudent, ErrorSums, distillation_loss
from rehyat.training.trajectories import TrajectoryPlan
from rehyat.training.wandit_teacher import WanDiTTeacher
from rehyat.weights import load_phi_weights

__all__ = ["one_thread"]
SMALL_PHI = FeatureMapConfig(hidden_dim=32, feature_dim=32)
CONVERSION = ConversionConfig(
    attention=HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_PHI)
)
LATENT = (16, 6, 8, 8)  # (C, T, H, W): 6 latent frames of 4×4 tokens


@pytest.fixture(scope="module")
def wan() -> WanDiT:
    return WanDiT.from_state_dict(tiny_wan_state_dict(seed=0)).eval().requires_grad_(False)


def text(seed: int, length: int = 6) -> torch.Tensor:
    return torch.randn(length, 4096, generator=torch.Generator().manual_seed(seed))


def teacher_for(wan, latent=LATENT, steps=3, cfg=5.0, prompts=3) -> WanDiTTeacher:
    return WanDiTTeacher(
        wan, [text(i) for i in range(prompts)], text(99, 4), latent, TeacherSampling(steps=steps, cfg=cfg)
    )


# ------------------------------------------------------------------------------------- run folders


def test_run_folder_round_trips_checkpoints_optimizer_and_rng(tmp_path):
    run = RunFolder(tmp_path, "run", {"model": "tiny", "cfg": (1, 2)}, keep_last=2)
    param = torch.nn.Parameter(torch.randn(3, 4))
    optimizer = torch.optim.AdamW([param], lr=1e-2)
    for step in range(1, 4):
        param.square().sum().backward()
        optimizer.step()
        run.save_checkpoint(step, {"p": param}, {"block_0": optimizer.state_dict()}, {"losses": [1.0, 0.5]})
    expected = (torch.rand(2), random.random(), np.random.rand())
    assert [p.name for p in run.checkpoint_paths()] == [
        "checkpoint-00000002.safetensors",
        "checkpoint-00000003.safetensors",
    ]
    checkpoint = run.load_latest()
    assert checkpoint.step == 3 and checkpoint.extra == {"losses": [1.0, 0.5]}
    assert torch.equal(checkpoint.tensors["p"], param.detach())
    restored = torch.nn.Parameter(checkpoint.tensors["p"].clone())
    other = torch.optim.AdamW([restored], lr=1e-2)
    other.load_state_dict(checkpoint.optimizer_state["block_0"])
    assert torch.equal(
        other.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    checkpoint.restore_rng()
    assert torch.equal(torch.rand(2), expected[0]) and (random.random(), np.random.rand()) == expected[1:]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run.checkpoint_paths()[0]).step == 2
    path = run.write_json("report.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


def test_run_folder_refuses_foreign_identity_bad_names_and_strangers(tmp_path):
    RunFolder(tmp_path, "run", {"model": "a", "blocks": [1]})
    RunFolder(tmp_path, "run", {"model": "a", "blocks": (1,)})  # same identity: reopened
    with pytest.raises(ValueError, match=r"another model or config \(differs in: model\)"):
        RunFolder(tmp_path, "run", {"model": "b", "blocks": [1]})
    for bad in ("a/b", "a\\b", "..", "x..y", "", ".hidden"):
        with pytest.raises(ValueError, match="run_name"):
            RunFolder(tmp_path, bad, {})
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a ReHyAt run folder"):
        RunFolder(tmp_path, "stranger", {})
    with pytest.raises(FileNotFoundError):
        RunFolder(tmp_path, "missing", {}, create=False)
    assert validate_run_name("ok_name-1") == "ok_name-1"
    a = torch.arange(6.0).reshape(2, 3)
    assert tensors_digest([a]) == tensors_digest([a.clone().to(torch.float64)])
    assert tensors_digest([a]) != tensors_digest([a.reshape(3, 2)]) != tensors_digest([a + 1e-3])


# ------------------------------------------------------------------------------ distributed, plots


def test_distributed_helpers_are_single_process_no_ops(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, None, True, False)
    values = torch.tensor([1.0, 2.0])
    all_reduce_mean_([values], ctx)
    assert values.tolist() == [1.0, 2.0]
    param = torch.nn.Parameter(torch.ones(2))
    average_gradients_([param], ctx)
    assert param.grad is None
    assert shard(list(range(7)), 1, 3) == [1, 4] and shard([1], 0, 1) == [1]
    with pytest.raises(ValueError, match="rank"):
        shard([1, 2], 2, 2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert env_context("cpu") == DistributedContext(1, 2, 0, torch.device("cpu"), "gloo")


def test_loss_curve_png_and_image(tmp_path):
    curves = {"mean": [3.0, 2.0, 1.0, 0.5], "block 0": [], "block 1": [2.0, 1.5, 1.0, 0.8]}
    path = loss_curve_png(curves, tmp_path / "curve.png", smooth=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = loss_curve_image(curves)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


# ------------------------------------------------------------------------------ options and plans


def test_clip_length_minimum_is_exact_and_named():
    causal = HybridAttentionConfig(chunk_frames=3, overlap_frames=1)
    assert min_latent_frames(causal) == 4  # Tc + To for the paper's setting
    assert min_latent_frames(HybridAttentionConfig(chunk_frames=3, overlap_frames=2)) == 4
    assert min_latent_frames(HybridAttentionConfig(chunk_frames=2, overlap_frames=3)) == 5
    assert min_latent_frames(HybridAttentionConfig(chunk_frames=3, overlap_frames=1, causal=False)) == 4
    for tc, to, causal_flag in ((3, 1, True), (2, 3, True), (3, 0, False)):
        cfg = HybridAttentionConfig(chunk_frames=tc, overlap_frames=to, causal=causal_flag)
        minimum = min_latent_frames(cfg)
        grid = FrameGrid(minimum, 1, 2)
        hybrid = HybridAttention(1, 4, cfg, 0)
        q = torch.randn(1, 1, grid.tokens, 4)
        out = hybrid(q, q, q, ReHyAtRun(grid=grid))
        out.sum().backward()  # the minimum length gives φ a gradient …
        assert hybrid.feature_maps.phi_q.weight2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"at least 4 latent frames \(13 video frames\)"):
        check_clip_length(3, causal)


def test_trajectory_plan_splits_prompts_and_guards_seeds():
    with pytest.raises(ValueError, match="prompts: the prompt list is empty"):
        TrajectoryPlan.build(0, DistillOptions())
    plan = TrajectoryPlan.build(3, DistillOptions(seed=5))
    assert plan.train_prompts == (0, 1) and plan.eval_prompts == (2,)
    assert [(t.conditioning, t.seed) for t in plan.group(1, 3)] == [(1, 8), (0, 9), (1, 10)]
    assert [(t.conditioning, t.seed) for t in plan.held_out()] == [(2, 1_000_000)]
    single = TrajectoryPlan.build(1, DistillOptions())
    assert single.eval_prompts == single.train_prompts == (0,)
    with pytest.raises(ValueError, match="holdout_prompts"):
        TrajectoryPlan.build(2, DistillOptions(holdout_prompts=2))
    with pytest.raises(ValueError, match="eval_seed"):
        TrajectoryPlan.build(2, DistillOptions(eval_seed=3)).check_seeds(10)
    for bad in (dict(iterations=0), dict(lr=0.0), dict(loss="l1"), dict(batch_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DistillOptions(**bad)
    with pytest.raises(ValueError, match="capture_stride"):
        TeacherSampling(steps=3, capture_stride=4)


# ------------------------------------------------------------------------------------------ sampler


def test_euler_ancestral_step_matches_its_definition():
    sigmas = flow_sigmas(4, 8.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    x, x0, noise = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    s, s_next = 0.8, 0.6
    # eta = 0: the deterministic Euler step of the flow ODE, x + (s_next − s)·v with v = (x − x0)/s
    assert torch.allclose(euler_ancestral_step(x, x0, s, s_next, noise, 0.0), x + (s_next - s) * (x - x0) / s)
    # eta = 1 with the exact x0: a sample (1 − s)·x0 + s·ε lands on (1 − s_next)·x0 + s_next·ε', ε' ~ N(0, 1)
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(5, generator=gen).expand(20000, 5)
    x_s = (1 - s) * target + s * torch.randn(20000, 5, generator=gen)
    stepped = euler_ancestral_step(x_s, target, s, s_next, torch.randn(20000, 5, generator=gen), 1.0)
    residual = (stepped - (1 - s_next) * target) / s_next
    assert abs(float(residual.mean())) < 0.02 and abs(float(residual.var()) - 1.0) < 0.03
    assert torch.equal(euler_ancestral_step(x, x0, 0.3, 0.0, noise, 1.0), x0)


# ------------------------------------------------------------------------------- capture, student


def test_wandit_capture_sees_the_teachers_attention_and_leaves_outputs_alone(wan):
    x = torch.randn(2, 16, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([500.0, 700.0])
    ctx = torch.stack([text(0), text(1)])
    reference = wan(x, t, ctx)
    seen: list[CapturedAttention] = []
    calls = []

    class Sink:
        def begin_forward(self):
            calls.append("begin")

        def attention(self, captured):
            seen.append(captured)

        def end_forward(self):
            calls.append("end")

    with WanDiTCapture(wan, [1, 0], Sink()) as capture:
        capture.active = True
        out = wan(x, t, ctx)
        capture.active = False
        wan(x, t, ctx)
    assert torch.equal(out, reference) and calls == ["begin", "end"]
    assert [c.block for c in seen] == [0, 1] and seen[0].grid == FrameGrid(4, 4, 4)
    for c in seen:
        assert c.q.shape == (2, 2, 64, 128)
        assert torch.allclose(c.y, F.scaled_dot_product_attention(c.q, c.k, c.v), atol=1e-6)
    with pytest.raises(ValueError, match=r"blocks \[2\] out of range"):
        check_blocks([0, 2], 2)
    with pytest.raises(ValueError, match="at least one block"):
        check_blocks([], 2)


def test_student_loss_step_and_error_sums_against_references():
    torch.manual_seed(0)
    cfg = HybridAttentionConfig(chunk_frames=1, overlap_frames=0, feature_map=SMALL_PHI)
    grid = FrameGrid(3, 2, 2)
    q, k, v, y = (torch.randn(2, 2, grid.tokens, 8) for _ in range(4))
    captured = CapturedAttention(0, q, k, v, y, grid)
    student = BlockStudent(HybridAttention(2, 8, cfg, 0), lr=1e-2, loss="l2")
    maps = student.hybrid.feature_maps
    with torch.no_grad():
        naive = rehyat_attention_naive(
            q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=4, chunk_frames=1, overlap_frames=0
        )
    assert torch.allclose(student.predict(captured), naive.to(q.dtype), atol=1e-5)
    expected_l2 = torch.stack([(naive[i] - y[i]).norm() for i in range(2)]).mean()
    assert distillation_loss(y, naive, "l2") == pytest.approx(float(expected_l2), rel=1e-5)
    assert distillation_loss(y, naive, "mse") == pytest.approx(float((naive - y).square().mean()), rel=1e-5)
    before = [p.detach().clone() for p in student.parameters]
    loss = student.train_step(captured)
    assert loss == pytest.approx(float(expected_l2), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters, strict=True))
    sums = ErrorSums()
    student.measure(captured, sums)
    with torch.no_grad():
        pred = student.predict(captured)
    summary = sums.summary()
    assert summary["relative_l2"] == pytest.approx(float((pred - y).norm() / y.norm()), rel=1e-5)
    cos = F.cosine_similarity(pred.flatten(1), y.flatten(1), dim=1).mean()
    assert summary["cosine"] == pytest.approx(float(cos), rel=1e-5) and summary["items"] == 2


# ----------------------------------------------------------------------------------- distillation


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_distillation_lowers_every_blocks_held_out_error(wan, tmp_path, fraction):
    teacher = teacher_for(wan)
    options = DistillOptions(iterations=60, lr=1e-2, checkpoint_every=25, query_chunk_fraction=fraction)
    distiller = Distiller(teacher, CONVERSION, options, num_prompts=3)
    distiller.run = RunFolder(tmp_path, "run", run_identity(distiller))
    result = run_distillation(distiller, phi_path=tmp_path / "phi.safetensors")
    held_out = result.report["held_out"]
    assert held_out["prompts_held_out"] and held_out["trajectories"] == [{"prompt": 2, "seed": 1_000_000}]
    for block, errors in held_out["blocks"].items():
        before, after = errors["before"], errors["after"]
        assert after["relative_l2"] < (0.95 if fraction == 1 else 0.97) * before["relative_l2"], block
        assert after["cosine"] > before["cosine"], block
    assert result.report["steps"] == 60 and result.report["trajectories"] == 20
    assert len(result.curves["mean over blocks"]) == 60
    phi = load_phi_weights(result.phi_path)
    assert phi.blocks == (0, 1) and torch.equal(
        phi.tensors["blocks.1.phi_k.weight2"], result.hybrid[1].feature_maps.phi_k.weight2.detach()
    )
    if getattr(phi, "training", None) is not None:
        assert phi.training["steps"] == 60 and "before" in phi.training["held_out"]["0"]
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps"] == 60
    assert "rel L2 before" in format_report(result.report)


def test_resume_in_process_continues_to_the_same_phi(wan, tmp_path):
    """A run stopped at step 7 (mid-trajectory) and resumed equals one uninterrupted run."""
    options = DistillOptions(iterations=11, lr=1e-2, checkpoint_every=100)

    def distiller(name, stop_at=None):
        d = Distiller(
            teacher_for(wan),
            CONVERSION,
            options,
            num_prompts=3,
            should_stop=(lambda: d.progress.step >= stop_at) if stop_at else None,
        )
        d.run = RunFolder(tmp_path, name, run_identity(d))
        return d

    whole = distiller("whole")
    whole.train()
    first = distiller("parts", stop_at=7)
    with pytest.raises(Exception, match="cancelled at step 7"):
        first.train()
    assert first.run.load_latest().extra["forward_in_group"] == 1
    second = distiller("parts")
    second.train()
    assert second.progress.mean_loss == whole.progress.mean_loss
    for b in (0, 1):
        for name, param in whole.hybrid[b].named_parameters():
            assert torch.equal(param, dict(second.hybrid[b].named_parameters())[name]), (b, name)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a checkpoint"])
def test_a_damaged_newest_checkpoint_is_skipped_by_name_and_the_older_one_used(tmp_path, damage):
    run = RunFolder(tmp_path, "run", {"model": "tiny"}, keep_last=3)
    for step in (1, 2, 3):
        run.save_checkpoint(step, {"p": torch.full((4,), float(step))}, {}, {"step": step})
    newest = run.checkpoint_paths()[-1]
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-7])
    elif damage == "garbage":
        newest.write_bytes(b"\x00" * 64)
    else:
        safetensors.torch.save_file({"x": torch.zeros(1)}, str(newest))
    with pytest.warns(UserWarning, match=rf"checkpoint.*{newest.name}.*resuming from checkpoint-00000002"):
        checkpoint = run.load_latest()
    assert checkpoint.step == 2 and torch.equal(checkpoint.tensors["p"], torch.full((4,), 2.0))
    for path in run.checkpoint_paths()[:-1]:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no checkpoint is readable: .*-00000003.*-00000002.*-00000001"):
        run.load_latest()


def test_resume_past_a_damaged_checkpoint_equals_an_uninterrupted_run(wan, tmp_path):
    options = DistillOptions(iterations=9, lr=1e-2, checkpoint_every=3, keep_checkpoints=3)

    def distiller(name, stop_at=None):
        d = Distiller(teacher_for(wan), CONVERSION, options, num_prompts=3,
                      should_stop=(lambda: d.progress.step >= stop_at) if stop_at else None)
        d.run = RunFolder(tmp_path, name, run_identity(d), keep_last=3)
        return d

    whole = distiller("whole")
    whole.train()
    first = distiller("parts", stop_at=7)
    with pytest.raises(Exception, match="cancelled at step 7"):
        first.train()
    newest = first.run.checkpoint_paths()[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    second = distiller("parts")
    with pytest.warns(UserWarning, match=newest.name):
        second.train()
    assert second.progress.mean_loss == whole.progress.mean_loss
    for b in (0, 1):
        for name, param in whole.hybrid[b].named_parameters():
            assert torch.equal(param, dict(second.hybrid[b].named_parameters())[name]), (b, name)


def test_query_chunk_subset_is_exact_per_chunk_and_seeded(wan):
    torch.manual_seed(0)
    for tc, to in ((2, 1), (3, 1), (2, 3)):
        cfg = HybridAttentionConfig(chunk_frames=tc, overlap_frames=to, feature_map=SMALL_PHI)
        student = BlockStudent(HybridAttention(2, 8, cfg, 0), lr=1e-2)
        with torch.no_grad():
            for param in student.parameters:
                param.add_(torch.randn_like(param) * 0.3)
        grid = FrameGrid(7, 2, 3)
        captured = CapturedAttention(0, *(torch.randn(2, 2, grid.tokens, 8) for _ in range(4)), grid)
        rows = lambda t, tc=tc: slice(t * tc * 6, min((t + 1) * tc, 7) * 6)  # noqa: E731
        last = -(-7 // tc) - 1
        with torch.no_grad():
            full = student.predict(captured)
            for chunks in ([0], [last], list(range(last + 1))):
                y_hat, y = student.predict_chunks(captured, chunks)
                assert torch.allclose(y_hat, torch.cat([full[:, :, rows(t)] for t in chunks], 2), atol=1e-6)
                assert torch.equal(y, torch.cat([captured.y[:, :, rows(t)] for t in chunks], 2))
        student.train_step(captured, [last])
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters)
    options = DistillOptions(query_chunk_fraction=0.5)
    d = Distiller(teacher_for(wan), CONVERSION, options, 3)
    picks = {tuple(d.query_chunks(6, 0)) for _ in range(3)}
    assert len(picks) == 1 and picks.pop()[0] in (1, 2)  # deterministic per step; chunk 0 has no linear part
    non_causal = ConversionConfig(
        attention=HybridAttentionConfig(chunk_frames=2, causal=False, feature_map=SMALL_PHI)
    )
    with pytest.raises(ValueError, match="query_chunk_fraction < 1 needs causal"):
        Distiller(teacher_for(wan), non_causal, options, 3)


def test_bad_inputs_get_clear_errors(wan, tmp_path):
    with pytest.raises(ValueError, match=r"too short .* at least 3 latent frames"):
        Distiller(teacher_for(wan, latent=(16, 2, 8, 8)), CONVERSION, DistillOptions(), 3)
    with pytest.raises(ValueError, match=r"blocks \[5\] out of range"):
        Distiller(
            teacher_for(wan),
            ConversionConfig(blocks=(5,), attention=CONVERSION.attention),
            DistillOptions(),
            3,
        )
    with pytest.raises(ValueError, match="prompt list is empty"):
        Distiller(teacher_for(wan), CONVERSION, DistillOptions(), 0)
    d = Distiller(teacher_for(wan), CONVERSION, DistillOptions(iterations=2), 3)
    RunFolder(tmp_path, "run", run_identity(d))
    other = Distiller(teacher_for(wan), CONVERSION, DistillOptions(iterations=2, lr=0.5), 3)
    with pytest.raises(ValueError, match=r"differs in: options.lr"):
        RunFolder(tmp_path, "run", run_identity(other))
    assert os.listdir(tmp_path) == ["run"]


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    OSError(30, "Read-only file system"),
    "safetensors",
])
def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one_and_says_where_and_why(
    tmp_path, monkeypatch, failure
):
    import safetensors.torch as st

    run = RunFolder(tmp_path, "run", {"model": "tiny"}, keep_last=1)
    run.save_checkpoint(1, {"p": torch.ones(3)}, {})
    before = run.checkpoint_paths()[0].read_bytes()

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 10)  # torn
        if failure == "safetensors":
            raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")
        raise failure

    monkeypatch.setattr(st, "save_file", failing)
    with pytest.raises(OSError, match=r"checkpoint 2 .*not written .*(No space|Read-only|serializing).*"
                                      r"checkpoint-00000001\.safetensors.* intact"):
        run.save_checkpoint(2, {"p": torch.full((3,), 2.0)}, {})
    assert [p.name for p in run.checkpoint_paths()] == ["checkpoint-00000001.safetensors"]
    assert run.checkpoint_paths()[0].read_bytes() == before
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
