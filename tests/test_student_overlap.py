"""The student samples at another overlap To than it trains with (``StudentRecipe.sampling_overlap_frames``).

φ and the LoRA do not depend on To: the two stages (and stage 2b) train at ``overlap_frames``, the
finished models and the φ file carry ``sampling_overlap_frames``. Real tiny models, no mocks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from student_support import TINY_ONPOLICY, TINY_RECIPE, make_tiny_teacher

from rehyat.atomic import atomic_save_file
from rehyat.config import ConversionConfig, HybridAttentionConfig
from rehyat.fidelity.attention_section import trained_attention
from rehyat.hybrid import build_attention
from rehyat.models.wan_rehyat import (
    conversion_config,
    convert,
    converted_blocks,
    save_phi,
    set_overlap_frames,
)
from rehyat.student import LORA_FILE, PHI_FILE, StudentRecipe, load_student, save_student, train_student
from rehyat.student.continuation import continue_student
from rehyat.student.files import LORA_FORMAT, read_lora
from rehyat.student.recipe import StudentContinuation
from rehyat.weights import load_phi_weights

CONTINUE = StudentContinuation(steps=2, seed=1, seam_weight=2.0)
SAMPLING = 3  # the shipped sampling To (StudentRecipe().sampling_overlap_frames, checked below)


@pytest.fixture(scope="module")
def tiny_teacher():
    return make_tiny_teacher()


def _overlap(model) -> int:
    """The To of a converted model: its conversion config, checked against every block's module."""
    overlap = conversion_config(model.dit).attention.overlap_frames
    assert {m.config.overlap_frames for m in converted_blocks(model.dit).values()} == {overlap}
    return overlap


def _inputs(teacher, frames: int = 6):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 12, frames, 8, 8, generator=gen)  # (B, C, T, h, w)
    return x, torch.tensor([600.0]), teacher.encode(["a red circle bounces"])


def test_recipe_sampling_overlap_defaults_and_validation():
    assert StudentRecipe().sampling_overlap_frames == 3 and StudentRecipe().student_overlap_frames == 3
    assert StudentRecipe().overlap_frames == 1  # both stages train at the paper's To
    assert StudentRecipe(sampling_overlap_frames=None, overlap_frames=0).student_overlap_frames == 0
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(ValueError, match="sampling_overlap_frames"):
            StudentRecipe(sampling_overlap_frames=bad)


def test_set_overlap_frames_equals_converting_with_that_overlap(tiny_teacher):
    """Reference: an unconverted copy converted afresh at To = 2 with the same φ."""
    base = copy.deepcopy(tiny_teacher)
    convert(base.dit, ConversionConfig(attention=HybridAttentionConfig(chunk_frames=3, overlap_frames=1)))
    with torch.no_grad():
        for module in converted_blocks(base.dit).values():
            for param in module.parameters():
                param.add_(0.05 * torch.randn_like(param))
    x, t, context = _inputs(tiny_teacher)
    at_one = base.dit(x, t, context)
    reference = copy.deepcopy(tiny_teacher)
    wider = HybridAttentionConfig(chunk_frames=3, overlap_frames=2)
    hybrid = {}
    for index, module in converted_blocks(base.dit).items():
        hybrid[index] = build_attention(1, 128, wider, index)
        hybrid[index].load_state_dict(module.state_dict())
    convert(reference.dit, ConversionConfig(attention=wider), hybrid)
    assert set_overlap_frames(base.dit, 2) is base.dit
    assert _overlap(base) == 2 and conversion_config(base.dit) == conversion_config(reference.dit)
    widened = base.dit(x, t, context)
    assert torch.equal(widened, reference.dit(x, t, context))
    assert not torch.allclose(widened, at_one)  # 6 frames, Tc = 3: the second chunk sees one frame more
    set_overlap_frames(base.dit, 1)
    assert torch.equal(base.dit(x, t, context), at_one)  # and back


def test_set_overlap_frames_refusals_change_nothing(tiny_teacher):
    with pytest.raises(ValueError, match="not converted"):
        set_overlap_frames(copy.deepcopy(tiny_teacher).dit, 2)
    model = copy.deepcopy(tiny_teacher)
    convert(model.dit)
    with pytest.raises(ValueError, match="overlap_frames"):
        set_overlap_frames(model.dit, -1)
    assert _overlap(model) == 1


def test_train_student_trains_at_overlap_frames_and_saves_the_sampling_overlap(tiny_teacher, tmp_path):
    """The sampling To changes neither φ nor the LoRA; the files and the returned models carry it."""
    wide = train_student(tiny_teacher, TINY_RECIPE, log=lambda _: None)
    narrow_recipe = replace(TINY_RECIPE, sampling_overlap_frames=None)
    narrow = train_student(tiny_teacher, narrow_recipe, log=lambda _: None)
    assert (_overlap(wide.stage1), _overlap(wide.student)) == (SAMPLING, SAMPLING)
    assert (_overlap(narrow.stage1), _overlap(narrow.student)) == (1, 1)
    weights = [m.student.dit.state_dict().values() for m in (wide, narrow)]
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b)  # the same training
    save_student(wide.stage1, wide.student, tmp_path, wide.report)
    assert load_phi_weights(tmp_path / PHI_FILE).config.attention.overlap_frames == SAMPLING
    assert read_lora(tmp_path / LORA_FILE)[1]["recipe"]["sampling_overlap_frames"] == SAMPLING
    loaded = load_student(tiny_teacher, tmp_path)
    assert _overlap(loaded) == _overlap(load_student(tiny_teacher, tmp_path, "stage1")) == SAMPLING
    # what φ was trained at (the fidelity table's stage-1 evidence compares φ at that To)
    assert trained_attention(tmp_path / PHI_FILE) == {"chunk_frames": 3, "overlap_frames": 1, "causal": True}
    save_phi(wide.stage1.dit, tmp_path / "bare.safetensors")  # no training record: the recorded To
    assert trained_attention(tmp_path / "bare.safetensors")["overlap_frames"] == SAMPLING


def test_continuation_trains_at_the_base_overlap_and_returns_the_sampling_one(tiny_teacher, tmp_path):
    """Files whose φ records To = 3 continue exactly as files of the same training that record To = 1."""
    for name, sampling in (("wide", SAMPLING), ("narrow", None)):
        result = train_student(tiny_teacher, replace(TINY_ONPOLICY, sampling_overlap_frames=sampling),
                               log=lambda _: None)
        save_student(result.stage1, result.student, tmp_path / name, result.report)
    stage1, wide, _ = continue_student(tiny_teacher, tmp_path / "wide", CONTINUE)
    _, narrow, _ = continue_student(tiny_teacher, tmp_path / "narrow", CONTINUE)
    assert (_overlap(stage1), _overlap(wide), _overlap(narrow)) == (SAMPLING, SAMPLING, 1)
    adapters = [{n: p for n, p in m.dit.named_parameters() if ".lora." in n} for m in (wide, narrow)]
    assert adapters[0] and all(torch.equal(p, adapters[1][n]) for n, p in adapters[0].items())


def test_shipped_student_samples_at_the_recipes_overlap():
    from rehyat.teacher.model import ASSETS

    phi = load_phi_weights(ASSETS / PHI_FILE)
    assert phi.config.attention.overlap_frames == StudentRecipe().student_overlap_frames
    assert trained_attention(ASSETS / PHI_FILE)["overlap_frames"] == StudentRecipe().overlap_frames
    assert phi.config.attention.chunk_frames == StudentRecipe().chunk_frames


def test_files_recorded_before_the_sampling_overlap_existed_continue_at_their_own_to(tiny_teacher, tmp_path):
    """A LoRA record without ``sampling_overlap_frames`` sampled at the To it trained at: kept so."""
    old_recipe = replace(TINY_ONPOLICY, sampling_overlap_frames=None)
    result = train_student(tiny_teacher, old_recipe, log=lambda _: None)
    save_student(result.stage1, result.student, tmp_path, result.report)
    tensors, record = read_lora(tmp_path / LORA_FILE)
    del record["recipe"]["sampling_overlap_frames"]
    atomic_save_file(tensors, {"format": LORA_FORMAT, "training": json.dumps(record)}, tmp_path / LORA_FILE,
                     replace=True)
    stage1, student, _ = continue_student(tiny_teacher, tmp_path, CONTINUE)
    assert (_overlap(stage1), _overlap(student)) == (1, 1)
