"""The models tree the workflow tests lay out for a real ComfyUI server (ComfyUI's own formats).

Everything is built from real classes with seeded random weights: a tiny Wan2.1 T2V transformer with
the real ComfyUI/original key names, a Wan2.1 VAE (ComfyUI's ``WanVAE``), a φ file written by the
core's φ writer for that transformer, conditionings written by the pack's conditioning writer, and an
offline Hugging Face cache holding a φ file. The file names are fixed (see :data:`NAMES`) so workflow
JSONs can name them; /work/notes/requests/H4_harness.md documents them for workflow authors.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from comfy_support import REPO_ROOT, WAN_TEXT_DIM, tiny_wan_state_dict

PACK_DIR_NAME = "ComfyUI-ReHyAt"
TINY_WAN_DIM = 256
TINY_WAN_LAYERS = 2
PHI_CHUNK_FRAMES = 3
PHI_OVERLAP_FRAMES = 1
PHI_WIDTH = 32  # hidden and feature width of the tiny φ (per head)
CONDITIONING_TOKENS = 8
CONDITIONING_FOLDER = "rehyat_conditioning"
HUB_REPO_ID = "rehyat-test/tiny-phi"
HUB_REVISION = "main"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class HarnessNames:
    """File names (inside their ComfyUI model folders) that workflows may reference."""

    wan: str = "rehyat_test_wan.safetensors"
    wan_low_noise: str = "rehyat_test_wan_low_noise.safetensors"  # a second expert (Wan2.2 A14B style)
    vae: str = "rehyat_test_wan_vae.safetensors"
    phi: str = "rehyat_test_phi.safetensors"
    phi_low_noise: str = "rehyat_test_phi_low_noise.safetensors"  # φ of the low-noise expert
    positive: str = "rehyat_test_positive.safetensors"
    negative: str = "rehyat_test_negative.safetensors"
    positive_2: str = "rehyat_test_positive_2.safetensors"  # a second prompt (extend / schedule)
    hub_repo_id: str = HUB_REPO_ID
    hub_filename: str = "rehyat_test_hub_phi.safetensors"
    hub_revision: str = HUB_REVISION


NAMES = HarnessNames()


@dataclass(frozen=True)
class ModelsTree:
    """Where :func:`lay_out_models` put things (absolute paths)."""

    base: Path
    models: Path
    wan: Path
    vae: Path
    phi: Path
    conditioning_dir: Path
    hf_home: Path


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors-save contiguous copies of ``tensors`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


def tiny_wan_vae_tensors(seed: int) -> dict[str, torch.Tensor]:
    """The Wan2.1 VAE state dict from ``tests/vae_support.py`` (ComfyUI's real ``WanVAE``, random)."""
    return importlib.import_module("vae_support").tiny_wan_vae_state_dict(seed)


def _phi_file(wan_sd: dict[str, torch.Tensor], path: Path, seed: int) -> Path:
    """Write a φ file for every block of the tiny Wan, with small random φ weights."""
    from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
    from rehyat.hybrid import HybridAttention
    from rehyat.weights import BaseModelInfo, fingerprint_state_dict, save_phi_weights

    heads = TINY_WAN_DIM // 128
    attention = HybridAttentionConfig(
        chunk_frames=PHI_CHUNK_FRAMES, overlap_frames=PHI_OVERLAP_FRAMES, causal=True,
        feature_map=FeatureMapConfig(hidden_dim=PHI_WIDTH, feature_dim=PHI_WIDTH))
    config = ConversionConfig(num_blocks=TINY_WAN_LAYERS, attention=attention)
    hybrid = {i: HybridAttention(heads, TINY_WAN_DIM // heads, attention, i) for i in range(TINY_WAN_LAYERS)}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    base = BaseModelInfo(dim=TINY_WAN_DIM, num_heads=heads, num_layers=TINY_WAN_LAYERS)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_phi_weights(path, hybrid, config, base, fingerprint_state_dict(wan_sd, "wan"),
                            training={"stage": "random weights (test harness)", "seed": seed})


def conditioning_folder(base: Path) -> Path:
    """The folder ReHyAtLoadConditioning lists: ``<output dir>/rehyat_conditioning``."""
    return base / "output" / CONDITIONING_FOLDER


def _conditioning(path: Path, seed: int) -> Path:
    """A ComfyUI CONDITIONING (one ``(1, L, 4096)`` entry, no extras) saved with the pack's writer."""
    from rehyat.conditioning_io import save_conditioning

    generator = torch.Generator().manual_seed(seed)
    cond = [[torch.randn(1, CONDITIONING_TOKENS, WAN_TEXT_DIM, generator=generator) * 0.1, {}]]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_conditioning(path, cond)
    return path


def _hub_cache(hf_home: Path, source: Path) -> None:
    """Lay out ``source`` as ``HUB_REPO_ID@main/<hub_filename>`` in a standard HF cache (blob + link)."""
    repo = hf_home / "hub" / ("models--" + HUB_REPO_ID.replace("/", "--"))
    data = source.read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / HUB_REVISION).write_text(HUB_COMMIT)
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    link = snapshot / NAMES.hub_filename
    if not link.exists():
        os.symlink(os.path.relpath(blob, snapshot), link)


def lay_out_models(base: Path, seed: int = 0) -> ModelsTree:
    """Create ``base/{custom_nodes,models,hf_home,...}`` for ``main.py --base-directory base``."""
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_DIR_NAME
    if not link.exists():
        os.symlink(REPO_ROOT, link, target_is_directory=True)
    models = base / "models"
    wan_sd = tiny_wan_state_dict(dim=TINY_WAN_DIM, ffn_dim=512, num_layers=TINY_WAN_LAYERS, seed=seed)
    wan = _save(wan_sd, models / "diffusion_models" / NAMES.wan)
    vae = _save(tiny_wan_vae_tensors(seed), models / "vae" / NAMES.vae)
    phi = _phi_file(wan_sd, models / "rehyat" / NAMES.phi, seed + 1)
    low_sd = tiny_wan_state_dict(dim=TINY_WAN_DIM, ffn_dim=512, num_layers=TINY_WAN_LAYERS, seed=seed + 10)
    _save(low_sd, models / "diffusion_models" / NAMES.wan_low_noise)
    _phi_file(low_sd, models / "rehyat" / NAMES.phi_low_noise, seed + 11)
    folder = conditioning_folder(base)
    _conditioning(folder / NAMES.positive, seed + 2)
    _conditioning(folder / NAMES.negative, seed + 3)
    _conditioning(folder / NAMES.positive_2, seed + 5)
    hf_home = base / "hf_home"
    hub_source = _phi_file(wan_sd, base / "hub_source" / NAMES.hub_filename, seed + 4)
    _hub_cache(hf_home, hub_source)
    for name in ("input", "output", "temp", "user/default"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return ModelsTree(base=base, models=models, wan=wan, vae=vae, phi=phi, conditioning_dir=folder,
                      hf_home=hf_home)
