"""The two-stage student (rehyat.student), its files, the block-causal oracle and the attention error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from student_support import TINY, TINY_ONPOLICY, TINY_RECIPE, make_tiny_teacher

from rehyat.cli import main
from rehyat.models.wan_rehyat import converted_blocks, forward_recurrent, load_phi, save_phi
from rehyat.ops.block_causal import block_causal_attention, block_causal_attention_naive
from rehyat.student import (
    LORA_FILE,
    PHI_FILE,
    StudentRecipe,
    load_student,
    save_student,
    student_files_present,
    train_student,
)
from rehyat.student.attention_error import ORACLE, WINDOWED, attention_errors
from rehyat.student.files import merged, read_lora
from rehyat.student.generate import generate_video
from rehyat.student.recipe import SHIPPED_CONTINUATION
from rehyat.teacher.model import SamplingConfig, Teacher, load_teacher
from rehyat.teacher.train import content_weight
from rehyat.training.flow_matching import flow_matching_loss
from rehyat.training.lora import (
    apply_comfy_lora,
    attach_lora,
    comfy_lora_state_dict,
    load_comfy_lora_adapters,
)
from rehyat.training.trainable import is_lora_target


@pytest.fixture(scope="module")
def tiny_teacher():
    return make_tiny_teacher()


@pytest.fixture(scope="module")
def trained(tiny_teacher):
    return train_student(tiny_teacher, TINY_RECIPE, log=lambda line: None)


# --- the block-causal oracle ------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "chunk"), [(6, 3), (7, 3), (5, 1), (4, 4), (4, 6)])
def test_block_causal_attention_matches_its_naive_reference(frames, chunk):
    gen = torch.Generator().manual_seed(frames * 10 + chunk)
    q, k, v = (torch.randn(2, 3, frames * 5, 8, generator=gen) for _ in range(3))  # (B, H, N, d)
    fast = block_causal_attention(q, k, v, tokens_per_frame=5, chunk_frames=chunk)
    naive = block_causal_attention_naive(q, k, v, tokens_per_frame=5, chunk_frames=chunk)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    if chunk >= frames:  # one chunk: plain softmax over every frame
        full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_block_causal_attention_sees_no_later_chunk():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 6 * 2, 4, generator=gen) for _ in range(3))
    before = block_causal_attention(q, k, v, tokens_per_frame=2, chunk_frames=3)
    v2 = v.clone()
    v2[:, :, 6:] += 10.0  # change frames 3..5 (the second chunk)
    after = block_causal_attention(q, k, v2, tokens_per_frame=2, chunk_frames=3)
    torch.testing.assert_close(before[:, :, :6], after[:, :, :6])
    assert not torch.allclose(before[:, :, 6:], after[:, :, 6:])


def test_block_causal_attention_refuses_bad_input():
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ValueError, match="chunk_frames"):
        block_causal_attention(q, q, q, tokens_per_frame=5, chunk_frames=0)
    with pytest.raises(ValueError, match="tokens"):
        block_causal_attention(q, q, q, tokens_per_frame=3, chunk_frames=1)


# --- weighted flow matching and the teacher's content weight -------------------------------------


def test_weighted_flow_matching_loss_is_the_weighted_mean():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.3, 0.8])
    weight_net = torch.randn(3, 1, 1, 1, generator=gen)

    def model_fn(x, t, context):
        return x * weight_net

    plain = flow_matching_loss(model_fn, x0, None, noise=noise, sigma=sigma, reduction="none")
    ones = flow_matching_loss(model_fn, x0, None, noise=noise, sigma=sigma, reduction="none",
                              weight=torch.ones_like(x0))
    torch.testing.assert_close(plain, ones)
    mask = torch.zeros_like(x0)
    mask[:, 0] = 1.0  # only channel 0 counts
    masked = flow_matching_loss(model_fn, x0, None, noise=noise, sigma=sigma, reduction="none", weight=mask)
    x_t = (1 - sigma.view(2, 1, 1, 1, 1)) * x0 + sigma.view(2, 1, 1, 1, 1) * noise
    err = (model_fn(x_t, None, None) - (noise - x0)).square()[:, 0].flatten(1).mean(1)
    torch.testing.assert_close(masked, err)
    with pytest.raises(ValueError, match="weight"):
        flow_matching_loss(model_fn, x0, None, noise=noise, sigma=sigma, weight=-mask)


def test_teacher_target_flow_matching_regresses_the_teacher_velocity():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.2, 0.7])
    scale_student = torch.randn(3, 1, 1, 1, generator=gen)
    scale_teacher = torch.randn(3, 1, 1, 1, generator=gen, requires_grad=True)

    def student(x, t, context):
        return x * scale_student

    def teacher(x, t, context):
        return x * scale_teacher + t.view(-1, 1, 1, 1, 1) / 1000

    loss = flow_matching_loss(
        student, x0, None, noise=noise, sigma=sigma, reduction="none", target_fn=teacher
    )
    x_t = (1 - sigma.view(2, 1, 1, 1, 1)) * x0 + sigma.view(2, 1, 1, 1, 1) * noise
    expected = (student(x_t, None, None) - teacher(x_t, sigma * 1000, None)).square().flatten(1).mean(1)
    torch.testing.assert_close(loss, expected.detach())
    assert not loss.requires_grad  # the teacher runs without gradients
    same = flow_matching_loss(teacher, x0, None, noise=noise, sigma=sigma, target_fn=teacher)
    assert float(same.detach()) == 0.0  # the teacher is its own minimiser

    def wrong_shape(x, t, context):
        return x[:, :1]

    with pytest.raises(ValueError, match="target_fn returned shape"):
        flow_matching_loss(student, x0, None, noise=noise, sigma=sigma, target_fn=wrong_shape)


def test_stage2_recipe_choices_are_checked_and_recorded(trained):
    with pytest.raises(ValueError, match="stage2_target"):
        StudentRecipe(stage2_target="videos")
    with pytest.raises(ValueError, match="stage2_foreground_weight"):
        StudentRecipe(stage2_foreground_weight=-1.0)
    assert StudentRecipe().stage2_target == "teacher" and StudentRecipe().stage2_data == "trajectories"
    stage2 = trained.report["stage2"]
    assert stage2["target"] == "the softmax teacher's velocity"
    assert stage2["foreground_weight"] == TINY_RECIPE.stage2_foreground_weight


def test_stage2_weight_is_the_content_weight_of_the_clean_clip():
    from rehyat.student.train import stage2_weight
    from rehyat.teacher.model import latent_to_pixels, pixels_to_latent

    pixels = -torch.ones(1, 3, 2, 8, 8)
    pixels[:, 0, :, 2:4, 2:4] = 1.0  # a red square
    latent = pixels_to_latent(pixels, 2)
    weight = stage2_weight(StudentRecipe(stage2_foreground_weight=4.0), 2)(latent)
    torch.testing.assert_close(weight, content_weight(latent_to_pixels(latent, 2), 4.0, 2))
    assert float(weight.max()) == 5.0 and float(weight.min()) == 1.0
    assert stage2_weight(StudentRecipe(stage2_foreground_weight=0.0), 2) is None


def test_run_stage2_with_the_teacher_target_needs_the_teacher(trained, tmp_path):
    from rehyat.student.train import run_stage2

    with pytest.raises(ValueError, match="needs the softmax teacher"):
        run_stage2(trained.stage1, TINY_RECIPE, tmp_path)


def test_content_weight_marks_shapes_and_their_edge():
    pixels = -torch.ones(1, 3, 2, 8, 8)  # black
    pixels[0, 0, 1, 3, 3] = 1.0  # one red pixel in frame 1
    weight = content_weight(pixels, 4.0, fold=2)  # (1, 12, 2, 4, 4)
    assert weight.shape == (1, 12, 2, 4, 4)
    back = torch.nn.functional.pixel_shuffle(weight[0].transpose(0, 1), 2)  # (T, 3, 8, 8)
    assert torch.all(back[0] == 1.0)  # frame 0 is background only
    assert torch.all(back[1, :, 2:5, 2:5] == 5.0)  # the pixel and its 8 neighbours, every channel
    assert back[1].sum() == 3 * (64 + 9 * 4)


# --- φ storage dtype and the ComfyUI LoRA --------------------------------------------------------


def test_phi_stored_in_fp16_is_half_the_size_and_loads_back(tiny_teacher, trained, tmp_path):
    full = save_phi(trained.stage1.dit, tmp_path / "a.safetensors")
    half = save_phi(trained.stage1.dit, tmp_path / "b.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    model = copy.deepcopy(tiny_teacher)
    load_phi(model.dit, half)
    for (name, a), b in zip(
        converted_blocks(model.dit)[0].state_dict().items(),
        converted_blocks(trained.stage1.dit)[0].state_dict().values(),
        strict=True,
    ):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a, b.half().float(), msg=name)
    big = copy.deepcopy(trained.stage1)
    with torch.no_grad():
        next(iter(converted_blocks(big.dit)[0].parameters())).fill_(1e6)
    with pytest.raises(ValueError, match="overflow"):
        save_phi(big.dit, tmp_path / "c.safetensors", dtype=torch.float16)
    assert not (tmp_path / "c.safetensors").exists()
    with pytest.raises(ValueError, match="dtype"):
        save_phi(trained.stage1.dit, tmp_path / "d.safetensors", dtype=torch.int8)


def test_comfy_lora_folded_into_the_weights_equals_the_adapters(tiny_teacher):
    model = copy.deepcopy(tiny_teacher.dit)
    attach_lora(model, 4, select=is_lora_target)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora.up." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    tensors = comfy_lora_state_dict(model)
    plain = copy.deepcopy(tiny_teacher.dit)
    layers = apply_comfy_lora(plain, tensors)
    assert layers and all(name.startswith("blocks.") for name in layers)
    x = torch.randn(1, 12, 6, 8, 8, generator=gen)
    t, context = torch.tensor([400.0]), torch.randn(1, 3, 32, generator=gen)
    torch.testing.assert_close(plain(x, t, context), model(x, t, context), rtol=1e-4, atol=1e-5)


def test_comfy_lora_loads_back_into_fresh_adapters(tiny_teacher):
    """``load_comfy_lora_adapters`` inverts ``comfy_lora_state_dict``; bad keys are refused."""
    model = copy.deepcopy(tiny_teacher.dit)
    attach_lora(model, 4, select=is_lora_target)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in (p for n, p in model.named_parameters() if ".lora." in n):
            param.copy_(torch.randn(param.shape, generator=gen))
    tensors = comfy_lora_state_dict(model)
    fresh = copy.deepcopy(tiny_teacher.dit)
    attach_lora(fresh, 4, select=is_lora_target)
    load_comfy_lora_adapters(fresh, tensors)
    loaded = comfy_lora_state_dict(fresh)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    key = next(k for k in tensors if k.endswith(".lora_up.weight"))
    with pytest.raises(ValueError, match=f"the LoRA has no {key}"):
        load_comfy_lora_adapters(fresh, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match=f"the LoRA has no {key} of shape"):
        load_comfy_lora_adapters(fresh, {**tensors, key: tensors[key][:, :2]})


def test_comfy_lora_refusals_change_nothing(tiny_teacher):
    model = copy.deepcopy(tiny_teacher.dit)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(128, 2),
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 128),
    }
    for bad, match in (
        ({**good, "diffusion_model.blocks.9.self_attn.q.lora_up.weight": torch.ones(128, 2),
          "diffusion_model.blocks.9.self_attn.q.lora_down.weight": torch.ones(2, 128)}, "does not have"),
        ({**good, "blocks.0.x.lora_up.weight": torch.ones(1, 1)}, "does not start"),
        ({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(128, 2)}, "lacks"),
        ({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(64, 2),
          "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 128)}, "is 64×128"),
    ):
        with pytest.raises(ValueError, match=match):
            apply_comfy_lora(model, bad)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


# --- the two stages, the files, generate ---------------------------------------------------------


def test_train_student_runs_both_stages_and_freezes_phi_in_stage_two(tiny_teacher, trained):
    report = trained.report
    assert report["recipe"]["stage1_steps"] == 3 and report["stage1"]["steps"] == 3
    assert len(report["stage2"]["loss_curve"]) == 2 and report["stage2"]["trained_parameters"] > 0
    assert set(trained.seconds) == {"stage1", "stage2"}
    json.dumps(report)  # JSON-able
    stage1_phi = converted_blocks(trained.stage1.dit)
    student_phi = converted_blocks(trained.student.dit)
    for block in stage1_phi:
        for (name, a), b in zip(
            stage1_phi[block].state_dict().items(), student_phi[block].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), f"stage 2 changed φ {block}.{name}"
    lora_ups = [p for n, p in trained.student.dit.named_parameters() if ".lora.up." in n]
    assert lora_ups and any(p.abs().sum() > 0 for p in lora_ups)  # the adapters trained (up starts at 0)
    assert not any(".lora." in name for name, _ in tiny_teacher.dit.named_parameters())  # teacher untouched


def test_student_files_round_trip(tiny_teacher, trained, tmp_path):
    report = {**trained.report, "command": "test"}
    paths = save_student(trained.stage1, copy.deepcopy(trained.student), tmp_path, report)
    assert [p.name for p in paths] == [PHI_FILE, LORA_FILE] and student_files_present(tmp_path)
    with safe_open(str(tmp_path / LORA_FILE), "pt") as handle:
        assert all(handle.get_tensor(k).dtype == torch.float16 for k in handle.keys())
    assert read_lora(tmp_path / LORA_FILE)[1]["command"] == "test"
    stage1 = load_student(tiny_teacher, tmp_path, "stage1")
    student = load_student(tiny_teacher, tmp_path, "student")
    reference = merged(copy.deepcopy(trained.student))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 12, 6, 8, 8, generator=gen)
    t, context = torch.tensor([700.0]), tiny_teacher.encode(["a red circle bounces"])
    torch.testing.assert_close(student.dit(x, t, context), reference.dit(x, t, context), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(
        stage1.dit(x, t, context), trained.stage1.dit(x, t, context), rtol=2e-2, atol=2e-3
    )
    assert not torch.allclose(student.dit(x, t, context), stage1.dit(x, t, context))
    torch.testing.assert_close(  # the recurrent form gives the parallel form's numbers
        forward_recurrent(student.dit, x, t, context), student.dit(x, t, context), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(FileExistsError):
        save_student(trained.stage1, copy.deepcopy(trained.student), tmp_path, report, replace=False)


def test_load_student_refuses_missing_files_and_unknown_stages(tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match=PHI_FILE):
        load_student(tiny_teacher, tmp_path, "stage1")
    with pytest.raises(ValueError, match="stage must be one of"):
        load_student(tiny_teacher, tmp_path, "stage3")
    assert not student_files_present(tmp_path)


def test_generate_uses_the_student_files(tiny_teacher, trained, tmp_path):
    tiny_teacher.save(tmp_path)
    save_student(trained.stage1, copy.deepcopy(trained.student), tmp_path, trained.report)
    for model, stage in (("rehyat", "student"), ("rehyat-stage1", "stage1")):
        clip = generate_video(model, "a red circle bounces", 5, 6, folder=tmp_path, steps=2)
        loaded = load_teacher(tmp_path)
        converted = load_student(loaded, tmp_path, stage)
        pixels = loaded.generate(
            "a red circle bounces", 6, 5,
            velocity=lambda x, t, c, m=converted: forward_recurrent(m.dit, x, t, c),
            sampling=SamplingConfig(steps=2, shift=loaded.config.sampling.shift,
                                    guidance=loaded.config.sampling.guidance),
        )
        expected = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
        assert torch.equal(clip, expected), model


# --- attention error ---------------------------------------------------------------------------


def test_attention_errors_score_cases_against_softmax(tiny_teacher, trained):
    cases = {"stage 1": converted_blocks(trained.stage1.dit)}
    result = attention_errors(tiny_teacher, cases, chunk_frames=3, overlap_frames=1, trajectories=2,
                              trajectory_steps=2)
    assert set(result["cases"]) == {"stage 1", WINDOWED, ORACLE} and result["trajectories"] == 2
    for case in result["cases"].values():
        assert set(case["blocks"]) == {"0", "1"}
        assert all(0 < e < 10 for e in case["blocks"].values())
    window, oracle, phi = (result["cases"][n]["blocks"] for n in (WINDOWED, ORACLE, "stage 1"))
    shares = [(window[b] - phi[b]) / (window[b] - oracle[b]) for b in window]
    assert result["gap_closed"]["stage 1"] == pytest.approx(sum(shares) / len(shares))
    one_chunk = attention_errors(tiny_teacher, cases, chunk_frames=6, overlap_frames=0, trajectories=1,
                                 trajectory_steps=2)
    assert all(e < 1e-5 for e in one_chunk["cases"][ORACLE]["blocks"].values())  # one chunk = softmax


# --- train-student ---------------------------------------------------------------------------------


def test_train_student_command_exports_and_refuses_overwriting(tiny_teacher, tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    tiny_teacher.save(teacher_dir)
    out = tmp_path / "out"
    args = ["train-student", "--teacher-dir", str(teacher_dir), "--stage1-steps", "2", "--stage2-steps", "1",
            "--export", str(out), "--run-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["exported"]) == 2 and student_files_present(out)
    command = read_lora(out / LORA_FILE)[1]["command"]
    assert command.startswith("python -m rehyat train-student --stage1-steps 2")
    with pytest.raises(SystemExit):
        main(args)
    assert "exists; pass --overwrite" in capsys.readouterr().err
    checkpoints = tmp_path / "runs" / "student" / "stage2" / "checkpoints"
    assert (checkpoints / "checkpoint-00000001.safetensors").is_file()
    first = read_lora(out / LORA_FILE)[0]
    assert main(args + ["--overwrite"]) == 0  # the finished run is resumed from its last checkpoint
    again = read_lora(out / LORA_FILE)[0]
    assert all(torch.equal(again[k], first[k]) for k in first)
    with pytest.raises(SystemExit):
        main(["train-student", "--teacher-dir", str(teacher_dir), "--stage1-steps", "0"])
    assert "--stage1-steps must be" in capsys.readouterr().err


def test_stage2_on_the_students_own_trajectories(tiny_teacher, trained):
    """``stage2_data="trajectories"``: the adapters train on the states the student's own guided
    sampler visits (refreshed on-policy), φ stays frozen, and the report says what the data was."""
    from dataclasses import replace

    from rehyat.student.onpolicy import student_trajectory
    from rehyat.student.train import run_stage2

    recipe = replace(TINY_RECIPE, stage2_data="trajectories", stage2_steps=3, stage2_trajectory_prompts=2,
                     stage2_trajectory_refresh=2, stage2_frames=6)
    states = student_trajectory(trained.stage1, "a red circle bounces", 3, 6)
    assert len(states) == TINY.sampling.steps and states[0][1] == 1.0
    assert torch.equal(states[0][0], trained.stage1.initial_noise(6, 3))
    calls = []
    student, report = run_stage2(trained.stage1, recipe, Path("unused"), lambda *a: calls.append(a),
                                 tiny_teacher)
    assert [c[1] for c in calls] == [1, 2, 3] and report["prompts"] == 4  # two buffers of two prompts
    assert "own sampling states" in report["target"] and len(report["loss_curve"]) == 3
    lora_ups = [p for n, p in student.dit.named_parameters() if ".lora.up." in n]
    assert lora_ups and any(p.abs().sum() > 0 for p in lora_ups)
    after = converted_blocks(student.dit)
    for block, module in converted_blocks(trained.stage1.dit).items():
        for a, b in zip(module.state_dict().values(), after[block].state_dict().values(), strict=True):
            assert torch.equal(a, b), "stage 2 changed φ"
    with pytest.raises(ValueError, match="needs the softmax teacher"):
        run_stage2(trained.stage1, recipe, Path("unused"))
    with pytest.raises(ValueError, match="stage2_data"):
        StudentRecipe(stage2_data="videos")
    assert recipe.estimated_seconds() > replace(recipe, stage2_data="clips").estimated_seconds()


class _Interrupt(Exception):
    pass


def _lora_tensors(student: Teacher) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.dit.named_parameters() if ".lora." in n}


def test_interrupted_train_student_resumes_to_the_same_student(tiny_teacher, tmp_path):
    """With ``run_dir`` both stages checkpoint; a run stopped in stage 2 and started again gives the
    same φ and adapters as an uninterrupted run, and a finished run is extended to more steps exactly."""
    from dataclasses import replace

    recipe = TINY_ONPOLICY
    whole = train_student(tiny_teacher, recipe, log=lambda _: None)

    def stop_at(stage: str, step: int):
        def progress(name: str, done: int, total: int, loss: float) -> None:
            if name == stage and done == step:
                raise _Interrupt

        return progress

    run_dir = tmp_path / "run"
    with pytest.raises(_Interrupt):  # stopped after stage-2 step 3: its last checkpoint is step 2
        train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=run_dir,
                      progress=stop_at("stage 2", 3))
    saved = sorted(p.name for p in (run_dir / "stage2" / "checkpoints").iterdir())
    assert saved == ["checkpoint-00000002.safetensors"]
    resumed = train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=run_dir)
    assert resumed.report["stage2"]["loss_curve"] == whole.report["stage2"]["loss_curve"]
    expected = _lora_tensors(whole.student)
    for name, tensor in _lora_tensors(resumed.student).items():
        assert torch.equal(tensor, expected[name]), name
    for a, b in zip(whole.stage1.dit.state_dict().values(), resumed.stage1.dit.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)

    stage1_dir = tmp_path / "stopped_in_stage1"  # stopped after φ step 2 of 3: resumes there
    with pytest.raises(_Interrupt):
        train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=stage1_dir,
                      progress=stop_at("stage 1", 2))
    assert not (stage1_dir / "stage2").exists()
    again = train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=stage1_dir)
    for a, b in zip(whole.stage1.dit.state_dict().values(), again.stage1.dit.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)

    extended_dir = tmp_path / "extended"  # 2 steps, then the same run asked for 4: as if run to 4 at once
    train_student(tiny_teacher, replace(recipe, stage2_steps=2), log=lambda _: None, run_dir=extended_dir)
    extended = train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=extended_dir)
    for name, tensor in _lora_tensors(extended.student).items():
        assert torch.equal(tensor, expected[name]), name
    with pytest.raises(ValueError, match="already holds 4 stage-2 steps"):
        train_student(tiny_teacher, replace(recipe, stage2_steps=2), log=lambda _: None, run_dir=extended_dir)
    with pytest.raises(ValueError, match="differs in: recipe.stage1_steps"):
        train_student(tiny_teacher, replace(recipe, stage1_steps=4), log=lambda _: None, run_dir=extended_dir)
    odd_dir = tmp_path / "odd"  # a finished run whose last step is not a refresh cannot be extended exactly
    train_student(tiny_teacher, replace(recipe, stage2_steps=3), log=lambda _: None, run_dir=odd_dir)
    with pytest.raises(ValueError, match="not at a trajectory refresh"):
        train_student(tiny_teacher, recipe, log=lambda _: None, run_dir=odd_dir)


def test_shipped_student_files_record_the_default_recipe():
    """The shipped φ and LoRA were made with exactly ``StudentRecipe()``: one place for the budgets."""
    from rehyat.teacher.model import ASSETS
    from rehyat.weights import load_phi_weights

    phi_record = load_phi_weights(ASSETS / PHI_FILE).training or {}
    lora_record = read_lora(ASSETS / LORA_FILE)[1]
    assert phi_record.get("recipe") == StudentRecipe().to_dict()
    assert lora_record.get("recipe") == StudentRecipe().to_dict()
    stage2b = [c["settings"] for c in lora_record.get("continuations", [])]  # and SHIPPED_CONTINUATION
    assert stage2b == ([SHIPPED_CONTINUATION.to_dict()] if SHIPPED_CONTINUATION is not None else [])
