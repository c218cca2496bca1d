"""Helpers for the fine-tuning tests: tiny Wan DiTs (real key names) and synthetic datasets."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.models.wan import WanDiT, WanDiTConfig
from rehyat.models.wan_rehyat import convert
from rehyat.training.dataset import LatentDataset

TEXT_DIM = 32
LATENT_SHAPE = (16, 3, 4, 4)  # (C, T, H, W): 3 latent frames of 2×2 tokens
SMALL_PHI = FeatureMapConfig(hidden_dim=16, feature_dim=16)
CONVERSION = ConversionConfig(
    attention=HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_PHI)
)


def tiny_config(text_dim: int = TEXT_DIM, layers: int = 2) -> WanDiTConfig:
    """A 2-block Wan DiT small enough for CPU tests (dim 64, 4 heads of 16)."""
    return WanDiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=layers, text_dim=text_dim, freq_dim=32)


def tiny_dit(seed: int = 0, *, rehyat: bool = True, config: WanDiTConfig | None = None) -> WanDiT:
    """A seeded WanDiT with a non-zero output head (so every block gets gradients), φ in all blocks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanDiT(config or tiny_config())
        torch.nn.init.normal_(model.head.head.weight, std=1.0 / math.sqrt(model.config.dim))
        if rehyat:
            convert(model, CONVERSION)
            for hybrid in (b.self_attn.attention.hybrid for b in model.blocks):
                for param in hybrid.parameters():  # a trained-looking φ, so the linear part matters
                    param.data.normal_(std=0.2)
    return model


def synthetic_dataset(
    folder: Path,
    *,
    count: int = 4,
    seed: int = 0,
    text_dim: int = TEXT_DIM,
    latent_shape: tuple[int, ...] = LATENT_SHAPE,
) -> LatentDataset:
    """``count`` samples: a shared smooth pattern plus small per-sample detail, random text."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.randn(latent_shape, generator=gen)
    dataset = LatentDataset(folder, model={"name": "tiny-wan", "in_dim": latent_shape[0]})
    for i in range(count):
        latent = pattern + 0.1 * torch.randn(latent_shape, generator=gen)
        context = torch.randn(3 + i % 3, text_dim, generator=gen)
        dataset.append(latent, context, {"source": "synthetic", "index": i})
    return dataset


def model_fn(model: WanDiT):
    """``model_fn(x_t, t, context) -> v`` of a WanDiT."""
    return lambda x, t, context: model(x, t, context)


def tiny_finetune_config(steps: int, batch: int, micro: int, trainable: str = "lora"):
    """The fine-tune settings tests/scripts/finetune_run.py uses (same numbers in-process)."""
    from rehyat.training.finetune import FinetuneConfig

    return FinetuneConfig(
        trainable=trainable,
        lora_rank=4,
        steps=steps,
        batch_size=batch,
        micro_batch=micro,
        learning_rate=1e-3,
        checkpoint_every=1,
    )


def trained_tensors(result) -> dict[str, torch.Tensor]:
    """What finetune_run.py saves: the trained parameters and the loss history."""
    tensors = {k: v.detach().clone().contiguous() for k, v in result.trainable.parameters.items()}
    tensors["losses"] = torch.tensor(result.losses, dtype=torch.float64)
    return tensors


def comfy_stock_nodes():
    """ComfyUI's own ``nodes.py`` (UNETLoader, LoraLoaderModelOnly, …), imported by path.

    The name ``nodes`` is this repository's node package when tests run from the repo root, so the
    stock module is loaded under the name ``comfy_stock_nodes``.
    """
    import importlib.util
    import sys

    from comfy_support import comfy_or_skip

    root = comfy_or_skip().root
    if "comfy_stock_nodes" not in sys.modules:
        spec = importlib.util.spec_from_file_location("comfy_stock_nodes", root / "nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfy_stock_nodes"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["comfy_stock_nodes"]
            raise
    return sys.modules["comfy_stock_nodes"]
