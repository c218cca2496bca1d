"""Fine-tune outputs in stock ComfyUI: the LoRA file through ``LoraLoaderModelOnly``, the full checkpoint
through ``UNETLoader`` (real node classes from ComfyUI's nodes.py) reproduce the fine-tuned model."""

from __future__ import annotations

import pytest
import torch
from comfy_support import comfy_or_skip, requires_comfyui, tiny_wan_state_dict
from finetune_support import CONVERSION, comfy_stock_nodes, model_fn, synthetic_dataset
from safetensors.torch import load_file, save_file
from thread_support import one_thread

from rehyat.integrations.comfyui_wan import load_phi_for_comfy, patch_comfy_wan
from rehyat.models.wan import WanDiT
from rehyat.models.wan_rehyat import convert, save_phi
from rehyat.training.export import save_comfy_lora, save_full_checkpoint
from rehyat.training.finetune import FinetuneConfig, finetune
from rehyat.training.lora import merge_lora

__all__ = ["one_thread"]
pytestmark = requires_comfyui
BASE = "rehyat_ft_base.safetensors"


@pytest.fixture(scope="module")
def comfy_nodes(tmp_path_factory):
    """ComfyUI's nodes module with a private diffusion_models / loras folder holding the base model."""
    comfy_or_skip()
    import folder_paths

    nodes = comfy_stock_nodes()
    root = tmp_path_factory.mktemp("comfy_models")
    for kind in ("diffusion_models", "loras"):
        (root / kind).mkdir()
        folder_paths.add_model_folder_path(kind, str(root / kind))
    save_file(tiny_wan_state_dict(seed=0), str(root / "diffusion_models" / BASE))
    return nodes, root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "set", count=2, text_dim=4096)


def fine_tuned(root, dataset, trainable: str) -> WanDiT:
    """The base model converted to ReHyAt and fine-tuned two steps (large lr: visible changes)."""
    model = convert(WanDiT.from_state_dict(load_file(str(root / "diffusion_models" / BASE))), CONVERSION)
    config = FinetuneConfig(
        trainable=trainable,
        lora_rank=4,
        steps=2,
        batch_size=2,
        micro_batch=2,
        learning_rate=1e-2,
        max_grad_norm=0.0,
    )
    finetune(model, model_fn(model), dataset, config)
    return model


def comfy_denoised(patcher, x, sigma, context) -> torch.Tensor:
    patcher.patch_model(device_to=patcher.load_device)
    try:
        return patcher.model.apply_model(
            x, sigma, c_crossattn=context, transformer_options={"wrappers": patcher.wrappers}
        )
    finally:
        patcher.unpatch_model(device_to=patcher.offload_device)


def expected(model: WanDiT, x, sigma, context) -> torch.Tensor:
    with torch.no_grad():
        return x - sigma.view(-1, 1, 1, 1, 1) * model(x, sigma * 1000, context)


def inputs():
    gen = torch.Generator().manual_seed(5)
    return (
        torch.randn(1, 16, 3, 4, 4, generator=gen),
        torch.tensor([0.7]),
        torch.randn(1, 6, 4096, generator=gen),
    )


def test_lora_file_loads_with_stock_lora_loader(comfy_nodes, dataset, tmp_path) -> None:
    nodes, root = comfy_nodes
    model = fine_tuned(root, dataset, "lora")
    save_comfy_lora(model, root / "loras" / "rehyat_ft.safetensors", info={"steps": 2})
    phi = save_phi(model, tmp_path / "phi.safetensors", training={"stage": "finetune"})
    with pytest.raises(FileExistsError, match="never overwrites"):
        save_comfy_lora(model, root / "loras" / "rehyat_ft.safetensors")

    base = nodes.UNETLoader().load_unet(BASE, "default")[0]
    with_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(base, "rehyat_ft.safetensors", 1.0)[0]
    assert len(with_lora.patches) == 2 * 10  # every block linear: self/cross q k v o + ffn.0 / ffn.2
    config, hybrid = load_phi_for_comfy(with_lora, phi)
    patched = patch_comfy_wan(with_lora, config, hybrid)
    x, sigma, context = inputs()
    got = comfy_denoised(patched, x, sigma, context)
    torch.testing.assert_close(got, expected(model, x, sigma, context), atol=2e-4, rtol=1e-4)
    # and the LoRA matters: the base model with the same φ differs
    base_out = comfy_denoised(patch_comfy_wan(base, config, hybrid), x, sigma, context)
    assert (base_out - got).abs().max() > 1e-3


def test_full_checkpoint_loads_with_stock_unet_loader(comfy_nodes, dataset, tmp_path) -> None:
    nodes, root = comfy_nodes
    model = fine_tuned(root, dataset, "lora")
    merge_lora(model)  # the "full" output of a LoRA run: adapters folded into the weights
    path = save_full_checkpoint(model, root / "diffusion_models" / "rehyat_ft_full.safetensors")
    assert not any(".hybrid." in k or ".lora" in k for k in load_file(str(path)))
    phi = save_phi(model, tmp_path / "phi_full.safetensors")
    loaded = nodes.UNETLoader().load_unet("rehyat_ft_full.safetensors", "default")[0]
    config, hybrid = load_phi_for_comfy(loaded, phi)
    x, sigma, context = inputs()
    got = comfy_denoised(patch_comfy_wan(loaded, config, hybrid), x, sigma, context)
    torch.testing.assert_close(got, expected(model, x, sigma, context), atol=2e-4, rtol=1e-4)
    assert (root / "diffusion_models" / BASE).is_file()  # the user's checkpoint is untouched
