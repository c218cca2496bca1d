"""Fine-tuning datasets (rehyat/training/dataset.py) and sample building (dataset_build.py)."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_support import requires_comfyui
from safetensors.torch import save_file

from rehyat.training.dataset import LatentDataset
from rehyat.training.dataset_build import (
    conditioning_tensor,
    generate_teacher_latent,
    noise_for_seed,
)
from rehyat.training.finetune import autocast_context
from rehyat.video_latent import latent_frame_count, video_frame_count, video_latent_shape

MODEL = {"family": "test", "in_dim": 4}


def test_append_load_batch_and_manifest(tmp_path) -> None:
    data = LatentDataset(tmp_path / "d", model=MODEL)
    assert len(data) == 0 and data.latent_shape is None
    a, b = torch.randn(4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    data.append(a, torch.ones(2, 8), {"source": "video", "clip": "a.mp4"})
    data.append(b, torch.ones(1, 5, 8) * 2, {"source": "teacher", "seed": 3})
    again = LatentDataset.open(tmp_path / "d")
    assert len(again) == 2 and again.latent_shape == (4, 2, 3, 3) and again.context_dim == 8
    assert again.context_length == 5
    assert [e["source"] for e in again.entries()] == ["video", "teacher"]
    assert torch.equal(again.load(0).latent, a) and torch.equal(again.load(1).latent, b[0])
    latents, contexts = again.batch([1, 0])
    assert latents.shape == (2, 4, 2, 3, 3) and contexts.shape == (2, 5, 8)
    assert torch.equal(contexts[1, :2], torch.ones(2, 8)) and not contexts[1, 2:].any()  # zero padding
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["model"] == MODEL and manifest["samples"][1]["seed"] == 3
    assert again.identity()["samples"] == ["sample-000000.safetensors", "sample-000001.safetensors"]


def test_mismatched_and_bad_samples_are_refused(tmp_path) -> None:
    data = LatentDataset(tmp_path / "d", model=MODEL)
    data.append(torch.randn(4, 2, 3, 3), torch.ones(2, 8), {"source": "video"})
    with pytest.raises(ValueError, match=r"latent shape \[4, 3, 3, 3\].*differs from the dataset's"):
        data.append(torch.randn(4, 3, 3, 3), torch.ones(2, 8), {})
    with pytest.raises(ValueError, match="context width 9 differs"):
        data.append(torch.randn(4, 2, 3, 3), torch.ones(2, 9), {})
    with pytest.raises(ValueError, match="non-finite"):
        data.append(torch.full((4, 2, 3, 3), float("nan")), torch.ones(2, 8), {})
    with pytest.raises(ValueError, match="batch size 2"):
        data.append(torch.randn(2, 4, 2, 3, 3), torch.ones(2, 8), {})
    with pytest.raises(ValueError, match="was made for model"):
        LatentDataset(tmp_path / "d", model={"family": "other"})
    save_file({"latent": torch.randn(4, 5, 3, 3), "context": torch.ones(2, 8)},
              str(tmp_path / "d" / "sample-000000.safetensors"))  # a file swapped behind the manifest
    with pytest.raises(ValueError, match="sample file sample-000000.safetensors"):
        LatentDataset.open(tmp_path / "d").load(0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="has no manifest.json"):
        LatentDataset(tmp_path / "other", model=MODEL)
    with pytest.raises(FileNotFoundError, match="not a ReHyAt fine-tuning dataset"):
        LatentDataset.open(tmp_path / "missing")


def test_video_latent_shape_and_conditioning_checks() -> None:
    assert video_latent_shape(81, 320, 480) == (16, 21, 40, 60)
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4"):
        video_latent_shape(80, 320, 480)
    with pytest.raises(ValueError, match="width must be a multiple of 16"):
        video_latent_shape(81, 320, 488)
    assert video_latent_shape(80, 328, 488, exact=False) == (16, 20, 41, 61)  # floored as ComfyUI's nodes
    assert [latent_frame_count(f) for f in (0, 1, 4, 5, 81)] == [0, 1, 1, 2, 21]
    assert [video_frame_count(latent_frame_count(f)) for f in (1, 17, 81)] == [1, 17, 81]
    cond = torch.randn(1, 5, 8)
    assert torch.equal(conditioning_tensor([[cond, {"pooled_output": None}]]), cond[0])
    with pytest.raises(ValueError, match="exactly one entry"):
        conditioning_tensor([[cond, {}], [cond, {}]])
    with pytest.raises(ValueError, match="image inputs"):
        conditioning_tensor([[cond, {"clip_vision_output": object()}]])
    with pytest.raises(ValueError, match="batch 2"):
        conditioning_tensor([[torch.randn(2, 5, 8), {}]])


@requires_comfyui
def test_noise_for_seed_is_comfyuis_noise() -> None:
    from comfy_support import import_comfyui

    import_comfyui()
    import comfy.sample

    latent = torch.zeros(1, 16, 3, 4, 4)
    assert torch.equal(noise_for_seed(42, (16, 3, 4, 4)), comfy.sample.prepare_noise(latent, 42))


def test_generate_teacher_latent_follows_the_flow() -> None:
    """With a model whose velocity is exact for one clean latent, the teacher returns that latent."""
    target = torch.randn(4, 2, 3, 3)
    seen = []

    def model_fn(x, t, context):
        seen.append(context.shape)
        return (x - target) / (t / 1000).view(-1, 1, 1, 1, 1)

    out = generate_teacher_latent(model_fn, torch.ones(5, 8), torch.zeros(3, 8), seed=1,
                                  latent_shape=(4, 2, 3, 3), steps=3, guidance=4.0, shift=5.0)
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)  # both predictions agree, so CFG too
    assert seen[:2] == [(1, 5, 8), (1, 3, 8)]


def test_autocast_context_by_device_and_precision() -> None:
    with autocast_context(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.bfloat16


FILE = r"sample-000000\.safetensors"


@pytest.mark.parametrize(("latent", "context", "pattern"), [
    (torch.full((4, 2, 3, 3), float("nan")), torch.ones(2, 8), FILE + r".*'latent'.*NaN"),
    (torch.randn(4, 2, 3, 3), torch.tensor([[float("inf")] * 8] * 2), FILE + r".*'context'.*inf"),
    (torch.randn(4, 2, 3, 3).to(torch.int64), torch.ones(2, 8), FILE + r".*latent.*int64"),
    (torch.randn(4, 2, 3, 3), torch.ones(2, 8, dtype=torch.int32), FILE + r".*context.*int32"),
    (torch.randn(4, 2, 3, 3), torch.tensor(1.0), FILE + r".*context.*\(L, D\).*\(\)"),
    (torch.randn(4, 2, 9), torch.ones(2, 8), FILE + r".*latent.*\(C, T, H, W\).*\(4, 2, 9\)"),
])
def test_non_finite_wrong_rank_or_dtype_samples_are_refused_at_load(tmp_path, latent, context, pattern):
    data = LatentDataset(tmp_path / "d", model=MODEL)
    data.append(torch.randn(4, 2, 3, 3), torch.ones(2, 8), {"source": "video"})
    save_file({"latent": latent, "context": context}, str(tmp_path / "d" / "sample-000000.safetensors"))
    with pytest.raises(ValueError, match=pattern):
        LatentDataset.open(tmp_path / "d").load(0)
