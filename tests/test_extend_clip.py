"""Extending a finished clip later, exactly (real ComfyUI, tiny Wan2.1 with real keys, Wan VAE):
Chunked(N, save_state) → Extend(M) equals Chunked(N + M, save_state) bit for bit on CPU fp32, for
fixed-step, multi-evaluation and noise-injecting samplers with CFG; every mismatch is refused by name."""

from __future__ import annotations

import os

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import node_class, pack_module
from sampler_support import patch_with_random_phi
from vae_support import load_tiny_wan_vae

pytestmark = requires_comfyui
TC, STEPS, CFG, SEED = 2, 3, 3.0, 21
SHAPE = (1, 16, 4, 4, 4)  # (B, C, N, H, W): N = 4 latent frames = 2 whole chunks


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def latent_of(frames: int, batch: int = 1) -> dict:
    return {"samples": torch.zeros((batch, 16, frames, 4, 4))}


class Setup:
    def __init__(self):
        self.sc = pack_module("nodes.sampling_comfy")  # imports ComfyUI in CPU mode (or skips)
        self.ext = pack_module("nodes.sampling_extend")
        self.state = pack_module("nodes.sampling_state")
        self.base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=0))
        self.other_base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=3))
        self.positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
        self.negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
        self.other_prompt = [[randn((1, 12, WAN_TEXT_DIM), 4), {}]]
        self.model = self.patch(self.base, phi_seed=7)

    def patch(self, base, phi_seed: int, tc: int = TC, to: int = 1):
        return patch_with_random_phi(base, chunk_frames=tc, overlap_frames=to, phi_seed=phi_seed)

    def chunked(self, frames: int, sampler: str = "euler", *, model=None, save_state=True, order="streaming",
                cfg=CFG, latent=None, vae=None, **kwargs):
        return self.sc.run_chunked_ksampler(
            model or self.model, SEED, STEPS, cfg, sampler, "simple", self.positive, self.negative,
            latent or latent_of(frames), 1.0, order=order, disable_pbar=True, save_state=save_state, vae=vae,
            save_frames=False, **kwargs)

    def extend(self, latent, frames: int, *, model=None, positive=None, save_state=False, vae=None):
        return self.ext.run_extend_clip(model or self.model, positive or self.positive, self.negative, latent,
                                        frames, save_state=save_state, vae=vae, disable_pbar=True,
                                        save_frames=False)


@pytest.fixture(scope="module")
def setup():
    return Setup()


@pytest.fixture(autouse=True)
def output_folder(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path / "output"


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun", "euler_ancestral"])
@torch.inference_mode()
def test_chunked_then_extend_equals_one_longer_run(setup, sampler, output_folder):
    short, _ = setup.chunked(4, sampler)
    path = short["rehyat_resume"]
    assert os.path.dirname(path) == str(output_folder / "rehyat_states")
    assert os.path.basename(path) == "ReHyAt_clip_00001_.safetensors"
    extended, images = setup.extend(short, 4)
    whole, _ = setup.chunked(8, sampler)
    assert torch.equal(extended["samples"], whole["samples"])  # bit for bit
    assert torch.equal(extended["samples"][:, :, :4], short["samples"])
    assert "rehyat_resume" not in extended and images.shape[0] == 0
    assert extended["rehyat_stats"]["extended_from"] == 4 and extended["rehyat_stats"]["chunks"] == 2
    # a partial last chunk is fine when the clip will not be extended again: its whole chunks match
    partial, _ = setup.extend(short, 3)
    assert partial["samples"].shape[2] == 7
    assert torch.equal(partial["samples"][:, :, :6], whole["samples"][:, :, :6])
    stock, _ = setup.chunked(8, sampler, save_state=False)  # KSampler noise: another clip for this seed
    assert not torch.equal(stock["samples"], whole["samples"])


@torch.inference_mode()
def test_extend_twice_equals_one_run_and_the_file_is_sized_as_stated(setup):
    first, _ = setup.chunked(2)
    second, _ = setup.extend(first, 2, save_state=True)
    third, _ = setup.extend(second, 4, save_state=True)
    whole, _ = setup.chunked(8)
    assert torch.equal(third["samples"], whole["samples"])
    assert first["rehyat_resume"] != second["rehyat_resume"] != third["rehyat_resume"]
    size_mib = os.path.getsize(third["rehyat_resume"]) / 2**20
    assert third["rehyat_stats"]["resume_file_mib"] == size_mib and "resume_file_mib" in first["rehyat_stats"]
    state, settings = pack_module("rehyat.streaming").load_resume(third["rehyat_resume"])
    assert settings.frames == 8 and settings.sampler_name == "euler" and settings.steps == STEPS
    assert settings.noise == "per_frame" and settings.chunk_frames == TC
    size = os.path.getsize(third["rehyat_resume"])
    sigmas = torch.zeros(STEPS + 1)
    estimate = setup.sc.estimate_store_bytes(setup.model, whole["samples"], sigmas, None, "euler")
    assert state.nbytes() == estimate  # one state per (evaluation, cond/uncond, item, block), as the formula
    assert estimate <= size <= pack_module("rehyat.streaming").resume_file_bytes(estimate)


@torch.inference_mode()
def test_a_new_prompt_continues_from_the_old_states(setup):
    short, _ = setup.chunked(4)
    same, _ = setup.extend(short, 2)
    changed, _ = setup.extend(short, 2, positive=setup.other_prompt)
    assert torch.equal(changed["samples"][:, :, :4], short["samples"])
    assert not torch.equal(changed["samples"][:, :, 4:], same["samples"][:, :, 4:])
    fresh, _ = setup.chunked(6, latent=None)
    assert torch.equal(same["samples"], fresh["samples"])


@torch.inference_mode()
def test_extension_decodes_exactly_the_new_frames():
    setup = Setup()
    vae = load_tiny_wan_vae()
    short, _ = setup.chunked(4)
    extended, images = setup.extend(short, 2, vae=vae)
    whole = vae.decode(extended["samples"])  # (B, T', H, W, 3): one decode of the whole clip
    new = whole[:, 1 + 4 * 3:]  # video frames of latent frames 4, 5: 4 each after the first's 1 + 4·3
    assert images.shape[0] == 8
    torch.testing.assert_close(images, new.reshape(-1, *new.shape[2:]), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_mismatches_are_refused_by_name(setup, output_folder):
    short, _ = setup.chunked(4)
    with pytest.raises(ValueError, match="another φ"):
        setup.extend(short, 2, model=setup.patch(setup.base, phi_seed=8))
    with pytest.raises(ValueError, match="another checkpoint"):
        setup.extend(short, 2, model=setup.patch(setup.other_base, phi_seed=7))
    with pytest.raises(ValueError, match="chunk_frames=2"):
        setup.extend(short, 3, model=setup.patch(setup.base, phi_seed=7, tc=3))
    edited = dict(short, samples=short["samples"] + 1e-3)
    with pytest.raises(ValueError, match="not the saved clip's"):
        setup.extend(edited, 2)
    with pytest.raises(ValueError, match="carries no rehyat_resume"):
        setup.extend({"samples": short["samples"]}, 2)
    with pytest.raises(ValueError, match="not inside the states folder"):
        setup.extend(dict(short, rehyat_resume="/etc/passwd"), 2)
    with pytest.raises(ValueError, match="extra_frames"):
        setup.extend(short, 0)
    # the clip itself refuses what could not be continued exactly
    with pytest.raises(ValueError, match="multiple of the patch's chunk_frames=2"):
        setup.chunked(5)
    with pytest.raises(ValueError, match="order='streaming'"):
        setup.chunked(4, order="sweep")
    with pytest.raises(ValueError, match="noise mask"):
        setup.chunked(4, latent=dict(latent_of(4), noise_mask=torch.ones(1, 1, 4, 4, 4)))
    # a damaged file is refused naming the tensor; nothing else is written
    damaged = output_folder / "rehyat_states" / "damaged_00001_.safetensors"
    store, settings = pack_module("rehyat.streaming").load_resume(short["rehyat_resume"])
    key, blocks = store.items()[0]
    blocks[0].kv[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        pack_module("rehyat.streaming").save_resume(damaged, store, settings)
    assert not damaged.exists()


@torch.inference_mode()
def test_the_disk_must_have_room(setup, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ValueError, match="save_state: the resume file needs"):
        setup.chunked(4)


def test_extend_node_inputs_and_help():
    node = node_class("ReHyAtExtendClip")
    schema = node.define_schema()
    assert [i.id for i in schema.inputs] == ["model", "positive", "negative", "latent", "extra_frames", "vae",
                                             "save_state", "video_prefix", "fps"]
    assert schema.category == "ReHyAt/sampling" and all(i.tooltip for i in schema.inputs)
    sampler_inputs = [i.id for i in node_class("ReHyAtChunkedSampler").define_schema().inputs]
    assert sampler_inputs[-3:] == ["save_state", "video_prefix", "fps"]


@torch.inference_mode()
def test_extend_node_executes(setup):
    sampler = node_class("ReHyAtChunkedSampler")
    short, _ = sampler.execute(model=setup.model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                               scheduler="simple", positive=setup.positive, negative=setup.negative,
                               latent_image=latent_of(4), denoise=1.0, order="streaming", state_device="auto",
                               save_state=True).result
    extended, images = node_class("ReHyAtExtendClip").execute(
        model=setup.model, positive=setup.positive, negative=setup.negative, latent=short, extra_frames=2,
        save_state=False).result
    whole, _ = setup.chunked(6)
    assert torch.equal(extended["samples"], whole["samples"]) and images.shape[0] == 0


@torch.inference_mode()
def test_growing_video_equals_encoding_the_whole_image_output(setup, output_folder):
    video = pack_module("rehyat.video")
    vae = load_tiny_wan_vae()
    sampler = node_class("ReHyAtChunkedSampler")
    short, images = sampler.execute(
        model=setup.model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
        positive=setup.positive, negative=setup.negative, latent_image=latent_of(4), denoise=1.0,
        order="streaming", state_device="auto", vae=vae, save_state=True, video_prefix="clips/grow",
        fps=16).result
    files = sorted((output_folder / "clips").glob("grow_*.mp4"))
    assert [f.name for f in files] == ["grow_00001_.mp4"]
    grown = video.read_mp4_frames(files[0])  # (T', H, W, 3) uint8
    reference = output_folder / "reference.mp4"
    video.encode_mp4(reference, images.numpy(), 16)  # the whole IMAGE output in one go
    whole = video.read_mp4_frames(reference)
    assert grown.shape == whole.shape and grown.shape[0] == images.shape[0] == 13
    mse = ((grown.astype("float64") - whole.astype("float64")) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * torch.log10(255.0**2 / torch.from_numpy(mse).clamp_min(1e-10))
    assert float(psnr.min()) >= 40.0, psnr
    # the extension appends its new chunks to a second file as they are decoded
    _, new_images = node_class("ReHyAtExtendClip").execute(
        model=setup.model, positive=setup.positive, negative=setup.negative, latent=short, extra_frames=2,
        vae=vae, save_state=False, video_prefix="clips/grow", fps=16).result
    second = output_folder / "clips" / "grow_00002_.mp4"
    assert video.read_mp4_frames(second).shape[0] == new_images.shape[0] == 8
    with pytest.raises(ValueError, match="video_prefix needs a VAE"):
        sampler.execute(model=setup.model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                        scheduler="simple", positive=setup.positive, negative=setup.negative,
                        latent_image=latent_of(4), denoise=1.0, order="streaming", state_device="auto",
                        video_prefix="x")
    with pytest.raises(ValueError, match="video_prefix"):
        sampler.execute(model=setup.model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                        scheduler="simple", positive=setup.positive, negative=setup.negative,
                        latent_image=latent_of(4), denoise=1.0, order="streaming", state_device="auto",
                        vae=vae, video_prefix="../escape")
