"""ReHyAtMakeDataset and ReHyAtFinetune in a real ComfyUI (in-process, in inference mode as executed)."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_support import load_tiny_wan_comfy, tiny_wan_state_dict
from finetune_support import comfy_stock_nodes
from nodes_support import import_pack, pack_folders_fixture, pack_module, randomize_phi, run_node, seeded
from safetensors.torch import load_file, save_file
from thread_support import one_thread
from vae_support import load_tiny_wan_vae

__all__ = ["one_thread", "pack_folders_fixture"]
BASE = "rehyat_ft_node_base.safetensors"


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, pack_folders):
    """models/, output/, loras and diffusion_models of ComfyUI pointed at tmp_path."""
    import_pack()
    import folder_paths

    models = tmp_path / "models"
    for kind in ("loras", "diffusion_models"):
        (models / kind).mkdir(parents=True)
        monkeypatch.setitem(
            folder_paths.folder_names_and_paths, kind, ([str(models / kind)], {".safetensors"})
        )
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    folder_paths.filename_list_cache.clear()
    save_file(tiny_wan_state_dict(seed=0), str(models / "diffusion_models" / BASE))
    yield models, pack_folders
    folder_paths.filename_list_cache.clear()


def patched_tiny_wan():
    """The tiny Wan loaded by ComfyUI and ReHyAt-patched (pack types) with non-trivial φ."""
    config_mod = pack_module("rehyat.config")
    comfyui_wan = pack_module("rehyat.integrations.comfyui_wan")
    patcher = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))
    small = config_mod.FeatureMapConfig(hidden_dim=16, feature_dim=16)
    conversion = config_mod.ConversionConfig(
        attention=config_mod.HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=small)
    )
    wan = patcher.get_model_object("diffusion_model")
    hybrid = comfyui_wan.build_hybrid_modules(wan, conversion, conversion.resolve_blocks(len(wan.blocks)))
    randomize_phi(hybrid, seed=3)
    return comfyui_wan.patch_comfy_wan(patcher, conversion, hybrid)


def denoised(patcher, x, sigma, context):
    patcher.patch_model(device_to=patcher.load_device)
    try:
        return patcher.model.apply_model(
            x, sigma, c_crossattn=context, transformer_options={"wrappers": patcher.wrappers}
        )
    finally:
        patcher.unpatch_model(device_to=patcher.offload_device)


def test_make_dataset_from_frames_and_latents(comfy_dirs) -> None:
    models, _ = comfy_dirs
    cond = [[seeded((1, 5, 4096), 1), {}]]
    with torch.inference_mode():
        text, name = run_node(
            "ReHyAtMakeDataset",
            dataset_name="clips",
            conditioning=cond,
            images=seeded((9, 32, 32, 3), 2).clamp(0, 1),
            vae=load_tiny_wan_vae(),
        )
        report = json.loads(text)
        assert name == "clips"
        assert (
            report["samples"] == 1 and report["latent_shape"] == [16, 3, 4, 4] and report["source"] == "video"
        )
        report = json.loads(
            run_node(
                "ReHyAtMakeDataset",
                dataset_name="clips",
                conditioning=cond,
                latent={"samples": seeded((1, 16, 3, 4, 4), 3)},
                note="seed 3",
            )[0]
        )
        assert report["samples"] == 2
        with pytest.raises(ValueError, match="differs from the dataset"):
            run_node(
                "ReHyAtMakeDataset",
                dataset_name="clips",
                conditioning=cond,
                latent={"samples": seeded((1, 16, 5, 4, 4), 3)},
            )
        with pytest.raises(ValueError, match="1\\+4k frames"):
            run_node(
                "ReHyAtMakeDataset",
                dataset_name="clips",
                conditioning=cond,
                images=seeded((4, 32, 32, 3), 2),
                vae=load_tiny_wan_vae(),
            )
        with pytest.raises(ValueError, match="dataset_name"):
            run_node(
                "ReHyAtMakeDataset",
                dataset_name="../escape",
                conditioning=cond,
                latent={"samples": seeded((1, 16, 3, 4, 4), 3)},
            )
    manifest = json.loads((models / "rehyat_datasets" / "clips" / "manifest.json").read_text())
    assert [s["source"] for s in manifest["samples"]] == ["video", "latent"]
    assert manifest["samples"][1]["note"] == "seed 3" and manifest["model"]["family"] == "wan2.1"


@pytest.mark.parametrize("output", ["lora", "full"])
def test_finetune_node_outputs_load_in_stock_comfyui(comfy_dirs, output) -> None:
    models, folders = comfy_dirs
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        model = patched_tiny_wan()
        for i in range(2):
            run_node(
                "ReHyAtMakeDataset",
                dataset_name="ds",
                conditioning=[[seeded((1, 4 + i, 4096), 10 + i), {}]],
                latent={"samples": seeded((1, 16, 3, 4, 4), 20 + i)},
            )
        x, sigma, context = seeded((1, 16, 3, 4, 4), 7), torch.tensor([0.6]), seeded((1, 6, 4096), 8)
        reference = denoised(model, x, sigma, context)
        trainable = "lora" if output == "lora" else "phi+self_attn"
        widgets = dict(
            dataset_name="ds",
            run_name=f"run_{output}",
            trainable=trainable,
            output=output,
            output_name=f"ft_{output}",
            steps=2,
            batch_size=2,
            micro_batch=1,
            learning_rate=2e-2,
            lora_rank=4,
            shift=5.0,
            gradient_checkpointing=True,
            checkpoint_every=1,
            seed=0,
        )
        out_model, image, text = run_node("ReHyAtFinetune", model=model, **widgets)
        report = json.loads(text)
        assert image.shape[0] == 1 and image.shape[-1] == 3
        assert report["steps"] == 2 and report["loss_fixed_noise_after"] != report["loss_fixed_noise_before"]
        tuned = denoised(out_model, x, sigma, context)
        assert (tuned - reference).abs().max() > 1e-4  # it changed the model …
        torch.testing.assert_close(denoised(model, x, sigma, context), reference)  # … but not the input one

        stock = comfy_stock_nodes()
        load_phi = pack_module("rehyat.integrations.comfyui_wan").load_phi_for_comfy
        if output == "lora":
            assert report["files"]["lora"].startswith(str(models / "loras"))
            base = stock.UNETLoader().load_unet(BASE, "default")[0]
            loaded = stock.LoraLoaderModelOnly().load_lora_model_only(
                base, "ft_lora_s2_lora.safetensors", 1.0
            )[0]
        else:
            assert report["files"]["full"].startswith(str(models / "diffusion_models"))
            assert not any(".hybrid." in k for k in load_file(report["files"]["full"]))
            loaded = stock.UNETLoader().load_unet("ft_full_s2.safetensors", "default")[0]
        config, hybrid = load_phi(loaded, report["files"]["phi"])
        rebuilt = pack_module("rehyat.integrations.comfyui_wan").patch_comfy_wan(loaded, config, hybrid)
        torch.testing.assert_close(denoised(rebuilt, x, sigma, context), tuned, atol=2e-4, rtol=1e-4)
        first = {k: load_file(v) for k, v in report["files"].items()}
        # the same run again resumes at its end (no training) and writes new files next to the old ones
        again = json.loads(run_node("ReHyAtFinetune", model=model, **widgets)[2])
        assert again["resumed_from"] == 2 and again["files"]["phi"].endswith(
            f"ft_{output}_s2_01_phi.safetensors"
        )
        for kind, path in report["files"].items():
            assert again["files"][kind] != path
            saved, redone = first[kind], load_file(again["files"][kind])
            assert saved.keys() == redone.keys() and all(torch.equal(saved[k], redone[k]) for k in saved)
            assert all(torch.equal(saved[k], v) for k, v in load_file(path).items())  # untouched
