"""Stage 2b: continuing a saved student's on-policy stage 2 (rehyat.student.continuation), its
boundary-step loss (rehyat.student.losses) and ``train-student --continue-from``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from student_support import TINY_ONPOLICY, TINY_RECIPE, make_tiny_teacher

from rehyat.cli import main
from rehyat.student import LORA_FILE, save_student, train_student
from rehyat.student.continuation import continue_student, next_prompt_index
from rehyat.student.files import file_digest, read_lora
from rehyat.student.losses import boundary_step_loss, weighted_mse
from rehyat.student.recipe import StudentContinuation
from rehyat.teacher.model import load_teacher
from rehyat.training.lora import comfy_lora_state_dict

CONTINUE = StudentContinuation(steps=2, seed=3, seam_weight=2.0)


def boundary_step_loss_naive(error, weight, chunk_frames):
    """A loop over the boundaries (k·Tc − 1, k·Tc) and every element."""
    total, norm = 0.0, 0.0
    for start in range(chunk_frames, error.shape[2], chunk_frames):
        step = error[:, :, start] - error[:, :, start - 1]
        w = 0.5 * (weight[:, :, start] + weight[:, :, start - 1])
        total += float((step**2 * w).sum())
        norm += float(w.sum())
    return total / norm if norm else 0.0


@pytest.mark.parametrize(("frames", "chunk"), [(7, 3), (6, 3), (3, 3), (5, 1), (2, 4)])
def test_boundary_step_loss_matches_its_naive_reference(frames, chunk):
    gen = torch.Generator().manual_seed(frames + 10 * chunk)
    error = torch.randn(2, 3, frames, 4, 4, generator=gen)  # (B, C, T, h, w)
    weight = 1 + 4 * (torch.rand(2, 3, frames, 4, 4, generator=gen) > 0.7).float()
    assert float(boundary_step_loss(error, weight, chunk)) == pytest.approx(
        boundary_step_loss_naive(error, weight, chunk), rel=1e-5)
    naive_mse = sum(float(e) ** 2 * float(w) for e, w in zip(error.flatten(), weight.flatten(), strict=True))
    assert float(weighted_mse(error, weight)) == pytest.approx(naive_mse / float(weight.sum()), rel=1e-5)


def test_boundary_step_loss_sees_only_changes_across_chunk_boundaries():
    gen = torch.Generator().manual_seed(0)
    per_chunk = torch.randn(1, 2, 3, 1, 1, generator=gen).repeat_interleave(3, dim=2)  # (1, 2, 9, 1, 1)
    error = per_chunk.expand(1, 2, 9, 4, 4).clone()  # constant within each chunk of 3
    weight = torch.ones_like(error)
    assert float(boundary_step_loss(error, weight, 3)) > 0  # the chunks differ
    error_within = error.clone()
    error_within[:, :, 1] += 5.0  # a change inside chunk 0 only: not a boundary
    assert torch.equal(boundary_step_loss(error_within, weight, 3), boundary_step_loss(error, weight, 3))
    shared = torch.randn(1, 2, 1, 4, 4, generator=gen).expand(1, 2, 9, 4, 4)  # one error everywhere
    assert float(boundary_step_loss(shared, weight, 3)) == 0.0
    grad = error.clone().requires_grad_(True)
    boundary_step_loss(grad, weight, 3).backward()
    touched = grad.grad.abs().sum(dim=(0, 1, 3, 4)) > 0
    assert touched.tolist() == [False, False, True, True, False, True, True, False, False]


@pytest.fixture(scope="module")
def tiny_teacher():
    return make_tiny_teacher()


@pytest.fixture(scope="module")
def base_files(tiny_teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    result = train_student(tiny_teacher, TINY_ONPOLICY, log=lambda _: None)
    save_student(result.stage1, result.student, folder, result.report)
    return folder


def _adapters(student) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.dit.named_parameters() if ".lora." in n}


def test_continue_student_starts_from_the_saved_lora_and_records_the_chain(tiny_teacher, base_files):
    tensors, base_record = read_lora(base_files / LORA_FILE)
    stage1, student, record = continue_student(tiny_teacher, base_files, CONTINUE)
    assert record["recipe"] == base_record["recipe"] and record["stage2"] == base_record["stage2"]
    (entry,) = record["continuations"]
    assert entry["settings"] == CONTINUE.to_dict()
    assert entry["from_lora_sha256"] == file_digest(base_files / LORA_FILE)
    report = entry["report"]
    assert report["first_prompt"] == base_record["stage2"]["prompts"] == 2  # two refreshes of one prompt
    assert report["prompts"] == 3 and report["seam_weight"] == 2.0 and len(report["loss_curve"]) == 2
    assert report["started_from"] == "a trained student's LoRA"
    zero_steps = continue_student(tiny_teacher, base_files, replace(CONTINUE, seam_weight=0.0))[1]
    assert any(not torch.equal(a, b) for a, b in zip(_adapters(student).values(),
                                                        _adapters(zero_steps).values(), strict=True))
    # a chain: continuing the continued files starts after every prompt used so far
    chained = base_files.parent / "chained"
    save_student(stage1, student, chained, record)
    assert next_prompt_index(read_lora(chained / LORA_FILE)[1]) == 3
    assert len(continue_student(tiny_teacher, chained, CONTINUE)[2]["continuations"]) == 2
    on_disk = read_lora(base_files / LORA_FILE)[0]
    assert all(torch.equal(on_disk[k], v) for k, v in tensors.items())  # the base file is untouched


def test_train_student_with_a_continuation_equals_continuing_the_saved_files(tiny_teacher, base_files):
    """``train_student(…, continuation=c)`` saves the student as shipped (fp16) and continues from the
    files: the same adapters as ``continue_student`` on files saved by a plain ``train_student``."""
    whole = train_student(tiny_teacher, TINY_ONPOLICY, log=lambda _: None, continuation=CONTINUE)
    _, student, _ = continue_student(tiny_teacher, base_files, CONTINUE)
    expected = _adapters(student)
    for name, tensor in _adapters(whole.student).items():
        assert torch.equal(tensor, expected[name]), name
    assert whole.report["continuations"][0]["settings"] == CONTINUE.to_dict() and "stage2b" in whole.seconds
    with pytest.raises(ValueError, match="stage2_data='trajectories'"):
        train_student(tiny_teacher, TINY_RECIPE, log=lambda _: None, continuation=CONTINUE)


def test_continue_student_refuses_files_it_cannot_continue(tiny_teacher, tmp_path):
    clips = train_student(tiny_teacher, TINY_RECIPE, log=lambda _: None)
    save_student(clips.stage1, clips.student, tmp_path, clips.report)
    with pytest.raises(ValueError, match="needs a student made with stage2_data='trajectories'"):
        continue_student(tiny_teacher, tmp_path, CONTINUE)
    with pytest.raises(ValueError, match="seam_weight"):
        StudentContinuation(seam_weight=-1.0)
    no_record = tmp_path / "no_record"  # a LoRA whose metadata names no recipe
    save_student(clips.stage1, clips.student, no_record, {"note": "made elsewhere"})
    with pytest.raises(ValueError, match="records no StudentRecipe"):
        continue_student(tiny_teacher, no_record, CONTINUE)


def test_train_student_continue_from_command(tiny_teacher, base_files, tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    tiny_teacher.save(teacher_dir)
    out = tmp_path / "out"
    args = ["train-student", "--teacher-dir", str(teacher_dir), "--continue-from", str(base_files),
            "--continue-steps", "2", "--continue-seed", "3", "--seam-weight", "2", "--export", str(out),
            "--run-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["continuations"] == [CONTINUE.to_dict()]
    record = read_lora(out / LORA_FILE)[1]
    assert record["continuations"][0]["command"].startswith("python -m rehyat train-student --continue-from")
    assert "command" not in record or record["command"] == read_lora(base_files / LORA_FILE)[1].get("command")
    checkpoints = tmp_path / "runs" / "student" / "stage2b" / "checkpoints"
    assert (checkpoints / "checkpoint-00000002.safetensors").is_file()
    _, student, _ = continue_student(load_teacher(teacher_dir), base_files, CONTINUE)  # the same adapters
    expected = comfy_lora_state_dict(student.dit, dtype=torch.float16)
    exported = read_lora(out / LORA_FILE)[0]
    assert set(exported) == set(expected)
    assert all(torch.equal(exported[k], expected[k].float()) for k in expected)
    with pytest.raises(SystemExit):
        main(["train-student", "--teacher-dir", str(teacher_dir), "--continue-from", str(base_files),
              "--stage1-steps", "3"])
    assert "--continue-from runs stage 2b only: --stage1-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-student", "--teacher-dir", str(teacher_dir), "--continue-from", str(base_files),
              "--continue-steps", "0"])
    assert "--continue-steps must be ≥ 1 with --continue-from" in capsys.readouterr().err


def test_demo_retrain_with_the_shipped_budgets_includes_the_shipped_stage_2b():
    from rehyat.demo.students import StudentPlan
    from rehyat.student import StudentRecipe
    from rehyat.student.recipe import SHIPPED_CONTINUATION

    shipped = StudentPlan(retrain=True, chunk_frames=3, overlap_frames=1, recipe=StudentRecipe())
    assert shipped.continuation is SHIPPED_CONTINUATION
    other = StudentPlan(retrain=True, chunk_frames=3, overlap_frames=1, recipe=TINY_ONPOLICY)
    assert other.continuation is None and other.seconds() == TINY_ONPOLICY.estimated_seconds()
    assert "stage 2b" not in other.describe()
    assert f"stage 2b: {SHIPPED_CONTINUATION.steps} more steps" in shipped.describe()
    assert shipped.seconds() > StudentRecipe().estimated_seconds()
    assert CONTINUE.estimated_seconds(TINY_ONPOLICY) > 0
