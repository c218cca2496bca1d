"""The embedded teacher: procedural data with ground truth, text encoder, files, training recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rehyat.models.wan import WanDiTConfig
from rehyat.teacher.analysis import attention_temporal_structure, frame_attention_matrix, window_shares
from rehyat.teacher.model import (
    ASSETS,
    SamplingConfig,
    Teacher,
    TeacherConfig,
    latent_to_pixels,
    load_teacher,
    pixels_to_latent,
    teacher_files_present,
)
from rehyat.teacher.shapes import COLOURS, ClipSpec, describe, detect_shapes, generate_clip, render
from rehyat.teacher.text import ParsedPrompt, TextEncoderConfig, TinyTextEncoder, parse_prompt
from rehyat.teacher.train import LOG_FILE, TrainConfig, export_teacher, new_teacher, step_loss, train_teacher

# --- procedural clips ----------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed():
    a, b, c = generate_clip(7), generate_clip(7), generate_clip(8)
    assert torch.equal(a.pixels, b.pixels) and a.truth == b.truth and a.prompt == b.prompt
    assert not torch.equal(a.pixels, c.pixels)
    assert a.pixels.shape == (3, 16, 32, 32) and a.pixels.min() >= -1 and a.pixels.max() <= 1
    longer = generate_clip(7, frames=40)  # the same scene, continued
    assert longer.truth[:16] == a.truth and torch.equal(longer.pixels[:, :16], a.pixels)


def test_ground_truth_matches_the_pixels():
    """A colour detector recovers every shape where it is not occluded, within a fraction of a pixel."""
    checked = 0
    for seed in range(12):
        clip = generate_clip(seed)
        colours = [s.colour for s in clip.truth[0]]
        found = detect_shapes(clip.pixels, colours)
        for t, shapes in enumerate(clip.truth):
            for s in shapes:
                others = [o for o in shapes if o is not s]
                if any(math.hypot(s.x - o.x, s.y - o.y) < s.radius + o.radius + 1 for o in others):
                    continue  # touching/overlapping: centroids shift
                x, y, area = found[t][s.colour]
                assert abs(x - s.x) < 0.35 and abs(y - s.y) < 0.35, (seed, t, s)
                expected = math.pi * s.radius**2 if s.kind == "circle" else (2 * s.radius) ** 2
                assert abs(area - expected) / expected < 0.25
                checked += 1
    assert checked > 200


def test_shapes_stay_inside_and_prompts_describe_them():
    spec = ClipSpec()
    kinds_seen, collisions = set(), 0
    for seed in range(30):
        clip = generate_clip(seed)
        for shapes in clip.truth:
            for s in shapes:  # a collision push may cross an edge by a fraction of a pixel
                assert s.radius - 0.5 <= s.x <= spec.size - s.radius + 0.5
                assert s.radius - 0.5 <= s.y <= spec.size - s.radius + 0.5
        first = clip.truth[0]
        assert clip.prompt == describe(first, clip.collided)
        for s in first:
            assert f"{s.colour} {s.kind}" in clip.prompt
            kinds_seen.add(s.kind)
        collisions += clip.collided
    assert kinds_seen == {"circle", "square"} and collisions > 0


def test_render_draws_a_square_exactly():
    from rehyat.teacher.shapes import ShapeState

    pixels = render([[ShapeState("square", "red", 8.0, 8.0, 2.0)]], 16)  # covers pixels 6..9 exactly
    red = torch.tensor(COLOURS["red"]) * 2 - 1
    assert torch.allclose(pixels[:, 0, 6:10, 6:10], red[:, None, None].expand(3, 4, 4))
    assert torch.all(pixels[:, 0, :6] == -1) and torch.all(pixels[:, 0, 10:] == -1)


# --- text and latent -----------------------------------------------------------------------------


def test_prompts_parse_into_shapes_and_motion():
    assert parse_prompt("a red circle and a blue square collide", 2) == ParsedPrompt(
        (("red", "circle"), ("blue", "square")), "collide"
    )
    assert parse_prompt("A RED circle, bounces!", 2) == ParsedPrompt((("red", "circle"),), "bounces")
    assert parse_prompt("a green square", 2) == ParsedPrompt((("green", "square"),), None)
    assert parse_prompt("", 2) == ParsedPrompt((), None)  # the unconditional prompt


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a purple circle", r"unknown words \['purple'\].*colours: blue, cyan"),
        ("circle red", "not in the teacher's grammar"),
        ("a red", "not in the teacher's grammar"),
        ("a red circle and a red square", "colour twice"),
        ("a red circle and a blue square and a green circle", "at most 2"),
        ("bounce", "motion but no shape"),
    ],
)
def test_prompts_outside_the_grammar_are_refused(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt, 2)


def test_text_encoder_gives_one_token_per_shape_and_zeroes_absent_ones():
    torch.manual_seed(0)
    encoder = TinyTextEncoder(TextEncoderConfig(width=16, max_shapes=2, out_dim=32)).eval()
    features = encoder.encode(["a red circle bounces", "", "a red circle and a blue square collide"])
    assert features.shape == (3, 4, 32)  # <bos>, shape 1, shape 2, motion
    assert (features[0, 2] == 0).all() and features[0, [0, 1, 3]].abs().amin(dim=1).gt(0).all()
    assert (features[1, 1:] == 0).all() and features[1, 0].abs().sum() > 0
    assert torch.equal(features[0, 1], features[2, 1])  # a shape's token depends on its slot, not on others
    swapped = encoder.encode(["a blue square and a red circle collide"])
    assert not torch.equal(swapped[0, 1], features[2, 1])  # drawing order is part of the token


def test_latent_fold_is_exactly_invertible():
    pixels = generate_clip(3).pixels[None]
    latent = pixels_to_latent(pixels, 4)
    assert latent.shape == (1, 48, 16, 8, 8)
    assert torch.equal(latent_to_pixels(latent, 4), pixels)
    assert torch.equal(
        latent[0, :, 0, 2, 3].reshape(3, 16)[:, 0], pixels[0, :, 0, 8, 12]
    )  # channel-major fold
    assert TeacherConfig().fold == 4 and TeacherConfig().tokens_per_frame == 16


def test_teacher_config_refuses_inconsistent_sizes():
    with pytest.raises(ValueError, match="in_dim"):
        TeacherConfig(dit=WanDiTConfig(dim=128, num_heads=1, num_layers=1, in_dim=10, out_dim=10))
    with pytest.raises(ValueError, match="text.out_dim"):
        TeacherConfig(text=TextEncoderConfig(out_dim=32))


# --- attention analysis -------------------------------------------------------------------------


def test_window_shares_of_a_known_matrix():
    frames = 8
    uniform = torch.full((frames, frames), 1 / frames, dtype=torch.float64)
    shares = window_shares(uniform, chunk_frames=2, overlap_frames=1)
    far = sum(abs(i - j) >= 3 for i in range(frames) for j in range(frames)) / frames**2
    assert shares["beyond_window"] == pytest.approx(far)
    diagonal = torch.eye(frames, dtype=torch.float64)
    assert window_shares(diagonal, 2, 1) == {
        "beyond_window": 0.0,
        "past_outside_softmax": 0.0,
        "future_outside_chunk": 0.0,
    }


def test_frame_attention_matrix_rows_sum_to_one_and_follow_keys():
    q = torch.randn(1, 2, 3 * 4, 8)
    k = torch.randn(1, 2, 3 * 4, 8)
    matrix = frame_attention_matrix(q, k, frames=3)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(3, dtype=torch.float64))
    k[:, :, 4:8] += q.mean(dim=2, keepdim=True) * 50  # frame 1's keys align with every query
    assert (frame_attention_matrix(q, k, frames=3).argmax(dim=1) == 1).all()


# --- files and training ----------------------------------------------------------------------------

TINY = TeacherConfig(
    dit=WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=1, in_dim=12, out_dim=12, text_dim=32),
    text=TextEncoderConfig(width=16, max_shapes=2, out_dim=32),
    clip=ClipSpec(frames=4, size=16, min_radius=2.0, max_radius=3.0),
    sampling=SamplingConfig(steps=2),
)
TINY_TRAIN = TrainConfig(steps=6, batch=2, warmup_steps=2, decay_steps=2, checkpoint_every=2)


def test_training_resumes_exactly(tmp_path):
    straight = train_teacher(tmp_path, "a", teacher_config=TINY, train=TINY_TRAIN, log=lambda s: None)
    train_teacher(tmp_path, "b", teacher_config=TINY, train=TINY_TRAIN, max_steps=3, log=lambda s: None)
    resumed = train_teacher(tmp_path, "b", teacher_config=TINY, train=TINY_TRAIN, log=lambda s: None)
    assert straight["step"] == resumed["step"] == 6
    out_a = export_teacher(tmp_path, "a", tmp_path / "ea", teacher_config=TINY, train=TINY_TRAIN)
    out_b = export_teacher(tmp_path, "b", tmp_path / "eb", teacher_config=TINY, train=TINY_TRAIN)
    a, b = load_teacher(out_a), load_teacher(out_b)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    log = json.loads((out_b / LOG_FILE).read_text())
    assert [row[0] for row in log["history"]] == [1, 2, 3, 4, 5, 6]
    assert log["training"]["steps_done"] == 6 and log["training"]["weights"] == "EMA"
    with pytest.raises(ValueError, match="another model or config"):
        train_teacher(
            tmp_path, "b", teacher_config=TINY, train=TrainConfig(steps=7, batch=2), log=lambda s: None
        )


def test_generate_writes_pixels_of_the_requested_length(tmp_path):
    torch.manual_seed(0)
    teacher = Teacher(TINY).eval()
    teacher.save(tmp_path)
    loaded = load_teacher(tmp_path)
    a = teacher.generate("a red circle bounces", 6, seed=3)
    assert a.shape == (3, 6, 16, 16)
    assert torch.equal(a, loaded.generate("a red circle bounces", 6, seed=3))
    with pytest.raises(FileNotFoundError, match="train-teacher"):
        load_teacher(tmp_path / "missing")


needs_assets = pytest.mark.skipif(
    not teacher_files_present(ASSETS),
    reason="rehyat/assets has no teacher (python -m rehyat train-teacher --export rehyat/assets)",
)


@needs_assets
def test_first_training_steps_reproduce_the_shipped_log():
    log = json.loads((ASSETS / LOG_FILE).read_text())
    train = TrainConfig(**log["training"]["train_config"])
    teacher_config = load_teacher().config
    teacher = new_teacher(teacher_config, train)
    optimizer = torch.optim.AdamW(
        teacher.parameters(), lr=train.learning_rate, betas=(0.9, 0.99), weight_decay=train.weight_decay
    )
    for step in range(2):
        for group in optimizer.param_groups:
            group["lr"] = train.learning_rate_at(step)
        loss = step_loss(teacher, teacher_config, train, step)
        assert loss.item() == pytest.approx(log["history"][step][1], rel=1e-4), step
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), train.grad_clip)
        optimizer.step()


@needs_assets
def test_shipped_teacher_has_temporal_attention_and_generates():
    teacher = load_teacher()
    assert teacher.config.dit.head_dim == 128 and teacher.config.dit.text_dim == 4096  # ComfyUI-loadable
    info = attention_temporal_structure(teacher, chunk_frames=3, overlap_frames=1, seeds=(5,), sigmas=(0.5,))
    shares = info["mean_over_blocks"]
    assert 0 < shares["beyond_window"] < 1 and len(info["blocks"]) == teacher.config.dit.num_layers
    for block in info["blocks"]:
        assert sum(block["mass_by_frame_offset"]) == pytest.approx(1.0, abs=1e-6)


@needs_assets
def test_shipped_teacher_draws_its_prompts_on_held_out_seeds():
    """Held-out prompt/seed pairs at the training length: the shipped teacher draws the prompted colours
    and no others. It does NOT yet meet the issue's kind (≥ 85 %) and continuity (≥ 95 %) targets
    (README: measured figures); this test pins what it reaches so a regression shows."""
    from rehyat.student.evaluation import evaluate_model
    from rehyat.teacher.evaluate import TEACHER_TARGETS

    summary = evaluate_model("teacher", clips=12, frames=16)
    assert summary["clips"] == 12 and summary["targets"] == TEACHER_TARGETS.to_dict()
    assert summary["presence"] >= 0.85 and summary["spurious_frames"] <= 0.05, summary
    assert summary["blank_frames"] <= 0.05 and summary["continuous_pairs"] >= 0.6, summary
