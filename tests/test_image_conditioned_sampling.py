"""Wan2.1 I2V and first-last-frame (FLF2V) through the ReHyAt Chunked Sampler with the stock
conditioning nodes (WanImageToVideo, WanFirstLastFrameToVideo) and ComfyUI's real Wan VAE: the
36-channel patch embedding, the concat latent and mask, CLIP-vision features (257 tokens, or 2 × 257
with FLF2V's position embedding) — streaming and sweep equal the stock KSampler, bit for bit."""

from __future__ import annotations

import sys

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui
from nodes_support import pack_module
from sampler_support import patch_with_random_phi, stock_wan_nodes, tiny_wan_i2v_state_dict, vision_output
from vae_support import load_tiny_wan_vae

pytestmark = requires_comfyui
SIZE, LENGTH, STEPS, CFG, SEED = 32, 17, 3, 4.0, 3  # 17 video frames → 5 latent frames of 4×4


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def patched(sd):
    return patch_with_random_phi(load_tiny_wan_comfy(sd), phi_seed=9)


@pytest.mark.parametrize("kind", ["i2v", "flf2v"])
@torch.inference_mode()
def test_stock_image_conditioning_samples_exactly_chunk_by_chunk(kind):
    sc = pack_module("nodes.sampling_comfy")  # imports ComfyUI in CPU mode (or skips)
    import comfy.sample

    nodes_wan = stock_wan_nodes()
    model = patched(tiny_wan_i2v_state_dict(flf_tokens=514 if kind == "flf2v" else None))
    wan = model.get_model_object("diffusion_model")
    assert wan.patch_embedding.weight.shape[1] == 36 and wan.img_emb is not None
    assert (wan.img_emb.emb_pos is not None) == (kind == "flf2v")
    vae = load_tiny_wan_vae()
    positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
    negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
    start, end = randn((1, SIZE, SIZE, 3), 4).sigmoid(), randn((1, SIZE, SIZE, 3), 5).sigmoid()
    if kind == "i2v":
        positive, negative, latent = nodes_wan.WanImageToVideo.execute(
            positive, negative, vae, SIZE, SIZE, LENGTH, 1, start_image=start,
            clip_vision_output=vision_output(6)).result
    else:
        positive, negative, latent = nodes_wan.WanFirstLastFrameToVideo.execute(
            positive, negative, vae, SIZE, SIZE, LENGTH, 1, start_image=start, end_image=end,
            clip_vision_start_image=vision_output(6), clip_vision_end_image=vision_output(7)).result
        assert positive[0][1]["clip_vision_output"].penultimate_hidden_states.shape[1] == 514
        assert positive[0][1]["concat_mask"][:, 3, -1].eq(0).all()  # (1, 4, T, h, w): the last frame is given
    assert positive[0][1]["concat_latent_image"].shape[2] == latent["samples"].shape[2] == 5
    noise = comfy.sample.prepare_noise(latent["samples"], SEED)
    stock = comfy.sample.sample(model, noise, STEPS, CFG, "euler", "simple", positive, negative,
                                latent["samples"], seed=SEED, disable_pbar=True)
    for order in ("streaming", "sweep"):
        out, _ = sc.run_chunked_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative,
                                         latent, order=order, disable_pbar=True)
        assert torch.equal(out["samples"], stock), (order, (out["samples"] - stock).abs().max())
    # the image conditioning matters: other CLIP-vision features give another clip
    other = [[c[0], {**c[1], "clip_vision_output": vision_output(8)}] for c in positive]
    changed = comfy.sample.sample(model, noise, STEPS, CFG, "euler", "simple", other, negative,
                                  latent["samples"], seed=SEED, disable_pbar=True)
    assert not torch.equal(changed, stock)


def test_real_width_check_script_runs_and_reports_exactness():
    """``scripts/check_image_conditioned_real_width.py`` at a tiny width (its real-width run is ≈ 5 min)."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "check_image_conditioned_real_width.py"
    done = subprocess.run([sys.executable, str(script), "--dim", "128", "--ffn", "256", "--kinds", "flf2v"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (case,) = json.loads(done.stdout)["cases"]
    assert (case["kind"], case["dim"], case["in_channels"], case["clip_tokens"]) == ("flf2v", 128, 36, 514)
    assert case["flf_position_embedding"] and case["finite"]
    assert all(order["equal"] for order in case["orders"].values())
