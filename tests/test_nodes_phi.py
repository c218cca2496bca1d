"""φ nodes in real ComfyUI: Patch Model (and its deprecated alias), Save φ, Load φ, fingerprints of
the checkpoints creators load (fp16, bf16, fp8_e4m3fn, fp8_scaled, LoRA-patched)."""

from __future__ import annotations

import logging

import pytest
import torch
from comfy_support import (
    WAN_TEXT_DIM,
    import_comfyui,
    load_tiny_wan_comfy,
    requires_comfyui,
    tiny_wan_state_dict,
)
from nodes_support import node_class, pack_folders_fixture, pack_module, randomize_phi, run_node, seeded  # noqa: F401

pytestmark = requires_comfyui
LATENT = (1, 16, 5, 8, 6)  # 5 latent frames: 3 chunks of Tc=2
SIGMA = torch.tensor([0.8])
WIDGETS = dict(num_blocks=2, placement="last", chunk_frames=2, overlap_frames=1, causal=True,
               forward_mode="parallel")


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_wan_state_dict(seed=0)


@pytest.fixture
def model(tiny_sd):
    return load_tiny_wan_comfy(tiny_sd)


def denoise(clone, seed: int = 2) -> torch.Tensor:
    """One model call through the clone's patches and wrappers, as sampling does it."""
    latent, context = seeded(LATENT, seed), seeded((1, 8, WAN_TEXT_DIM), seed + 1)
    clone.patch_model(device_to=clone.load_device)
    try:
        with torch.inference_mode():
            return clone.model.apply_model(latent, SIGMA, c_crossattn=context,
                                           transformer_options={"wrappers": clone.wrappers})
    finally:
        clone.unpatch_model(device_to=clone.offload_device)


def trained_clone(model, seed: int = 1, **widgets):
    """Patch Model without φ, then give its φ random non-trivial weights (a stand-in for distillation)."""
    clone, report = run_node("ReHyAtPatchModel", model=model, **{**WIDGETS, **widgets})
    randomize_phi(pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).hybrid, seed)
    return clone, report


def test_schemas_have_tooltips_descriptions_and_categories():
    for node_id, category in [("ReHyAtPatchModel", "ReHyAt/model"), ("ReHyAtPatchWan", "ReHyAt/model"),
                              ("ReHyAtLoadPhi", "ReHyAt/model"), ("ReHyAtSavePhi", "ReHyAt/model")]:
        schema = node_class(node_id).define_schema()
        assert schema.category == category and len(schema.description) > 40
        assert all(i.tooltip for i in schema.inputs), [i.id for i in schema.inputs if not i.tooltip]
    old = node_class("ReHyAtPatchWan").define_schema()
    assert old.is_deprecated and [i.id for i in old.inputs][:2] == ["model", "phi_file"]
    new = node_class("ReHyAtPatchModel").define_schema()
    inputs = {i.id: i for i in new.inputs}
    assert inputs["phi"].optional and inputs["num_blocks"].default == 15
    assert [o.io_type for o in new.outputs] == ["MODEL", "STRING"]


def test_save_load_patch_round_trip_reproduces_the_model(model, pack_folders):
    clone, _ = trained_clone(model)
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="rehyat_test_/phi")
    assert saved == "rehyat_test_/phi_00001_.safetensors"
    assert (pack_folders.phi / saved).is_file()
    (again,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="rehyat_test_/phi")
    assert again == "rehyat_test_/phi_00002_.safetensors"  # numbered, never overwritten
    assert saved in node_class("ReHyAtLoadPhi").define_schema().inputs[0].options  # the list refreshes

    phi, info = run_node("ReHyAtLoadPhi", phi_file=saved)
    assert phi.blocks == (0, 1) and phi.config.attention.chunk_frames == 2
    for needle in ("2 of 2 blocks [0, 1]", "chunk_frames (Tc)=2", "overlap_frames (To)=1", "causal",
                   "dim=256, heads=2, layers=2", "training: not recorded"):
        assert needle in info, (needle, info)

    fresh = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))  # another load of the same checkpoint
    reloaded, report = run_node("ReHyAtPatchModel", model=fresh, phi=phi,
                                **{**WIDGETS, "chunk_frames": 5, "num_blocks": 15})
    assert "φ loaded: its settings rule" in report
    assert "chunk_frames=5 (φ: 2)" in report and "num_blocks=15 (φ: 2)" in report
    assert "UNTRAINED" not in report
    expected = denoise(clone)
    assert torch.equal(denoise(reloaded), expected)
    assert not torch.equal(denoise(trained_clone(model, seed=9)[0]), expected)  # φ content matters


def test_training_metadata_attached_by_a_trainer_is_saved(model, pack_folders):
    clone, _ = trained_clone(model)
    clone.attachments["rehyat_training"] = {"stage": "distill", "steps": 12, "teacher": "tiny"}
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="t")
    phi, info = run_node("ReHyAtLoadPhi", phi_file=saved)
    assert phi.training == {"stage": "distill", "steps": 12, "teacher": "tiny"}
    assert '"stage": "distill"' in info


def test_without_phi_untrained_is_said_plainly_and_blocks_are_explicit(model, caplog):
    with caplog.at_level(logging.WARNING, logger="ReHyAt"):
        clone, report = run_node("ReHyAtPatchModel", model=model, **{**WIDGETS, "num_blocks": 1})
    assert "UNTRAINED" in report and "1 of 2 blocks [1]" in report
    assert any("UNTRAINED" in r.getMessage() for r in caplog.records)
    assert set(clone.object_patches) == {"diffusion_model.blocks.1.self_attn"}
    with pytest.raises(ValueError, match=r"num_blocks must be in \[0, 2\] for this 2-block model; got 15"):
        run_node("ReHyAtPatchModel", model=model, **{**WIDGETS, "num_blocks": 15})  # the default: no clamp
    with pytest.raises(ValueError, match="forward_mode 'recurrent'.*1 of 2 blocks"):
        run_node("ReHyAtPatchModel", model=model, **{**WIDGETS, "num_blocks": 1, "forward_mode": "recurrent"})


def test_deprecated_patch_wan_loads_a_phi_file_like_patch_model(model, pack_folders):
    clone, _ = trained_clone(model)
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="old")
    assert saved in node_class("ReHyAtPatchWan").define_schema().inputs[1].options
    (old,) = run_node("ReHyAtPatchWan", model=model, phi_file=saved, **{**WIDGETS, "num_blocks": 30})
    assert torch.equal(denoise(old), denoise(clone))
    (untrained,) = run_node("ReHyAtPatchWan", model=model, phi_file="(none: untrained φ)",
                            **{**WIDGETS, "num_blocks": 30, "forward_mode": "recurrent"})  # clamped as before
    assert len(untrained.object_patches) == 2


def test_phi_for_another_checkpoint_is_refused(model, pack_folders):
    clone, _ = trained_clone(model)
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="a")
    phi, _ = run_node("ReHyAtLoadPhi", phi_file=saved)
    other = load_tiny_wan_comfy(tiny_wan_state_dict(seed=5))
    with pytest.raises(ValueError, match="fingerprint does not match"):
        run_node("ReHyAtPatchModel", model=other, phi=phi, **WIDGETS)


def test_save_refuses_unpatched_models_and_escaping_names(model, pack_folders):
    with pytest.raises(ValueError, match="not ReHyAt-patched"):
        run_node("ReHyAtSavePhi", model=model, filename_prefix="x")
    clone, _ = trained_clone(model)
    for prefix in ("../x", "/tmp/x", "a/../../x", ""):
        with pytest.raises(ValueError, match="filename_prefix"):
            run_node("ReHyAtSavePhi", model=clone, filename_prefix=prefix)
    with pytest.raises(ValueError, match="'\\.\\.'"):
        run_node("ReHyAtLoadPhi", phi_file="../outside.safetensors")
    assert sorted(p.name for p in pack_folders.phi.parent.parent.rglob("*.safetensors")) == []


def test_symlinked_folder_and_files_work_like_comfyui_model_folders(model, pack_folders, tmp_path):
    clone, _ = trained_clone(model)
    elsewhere = tmp_path / "big_disk"
    elsewhere.mkdir()
    linked = pack_folders.phi / "linked"
    linked.symlink_to(elsewhere, target_is_directory=True)
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="linked/phi")
    assert (elsewhere / "phi_00001_.safetensors").is_file()  # written through the folder link
    (pack_folders.phi / "alias.safetensors").symlink_to(elsewhere / "phi_00001_.safetensors")
    options = node_class("ReHyAtLoadPhi").define_schema().inputs[0].options
    assert {saved, "alias.safetensors"} <= set(options)
    for name in (saved, "alias.safetensors"):
        phi, _ = run_node("ReHyAtLoadPhi", phi_file=name)
        assert phi.blocks == (0, 1)


# ------------------------------------------------------------------------------------------------
# fingerprints of the checkpoints creators load
# ------------------------------------------------------------------------------------------------


def _fp8_scaled(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's fp8_scaled format: fp8 weights with a per-tensor scale_weight, and the marker key."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max() / 448.0 * 16  # scaled values far from the unscaled ones
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return out


@pytest.mark.parametrize("variant", ["fp16", "bf16", "fp8_e4m3fn", "fp8_scaled"])
def test_phi_made_on_fp32_loads_on_low_precision_checkpoints(tiny_sd, model, variant):
    comfy = import_comfyui()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}
    if variant == "fp8_scaled":
        loaded = comfy.sd.load_diffusion_model_state_dict(_fp8_scaled(tiny_sd))
        assert float(loaded.model.diffusion_model.blocks[0].self_attn.q.scale_weight) != 1.0
    else:
        dtype = dtypes[variant]
        loaded = comfy.sd.load_diffusion_model_state_dict({k: v.to(dtype) for k, v in tiny_sd.items()},
                                                          model_options={"dtype": dtype})
    weight = loaded.model.diffusion_model.blocks[0].self_attn.q.weight
    assert weight.dtype == dtypes.get(variant, torch.float8_e4m3fn)
    weights = pack_module("rehyat.weights")
    patch = pack_module("nodes.patching")
    assert weights.fingerprints_match(patch.model_fingerprint(loaded), patch.model_fingerprint(model))
    clone, _ = trained_clone(model)
    hybrid = pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).hybrid
    phi = weights.PhiWeights(pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).config,
                             (0, 1), weights.BaseModelInfo(256, 2, 2), patch.model_fingerprint(model),
                             weights.collect_phi_tensors(hybrid))
    patched, report = run_node("ReHyAtPatchModel", model=loaded, phi=phi, **WIDGETS)
    assert "φ loaded" in report and len(patched.object_patches) == 2


def test_fp8_scaled_fingerprint_needs_the_scale(tiny_sd):
    weights = pack_module("rehyat.weights")
    scaled = _fp8_scaled(tiny_sd)
    reference = weights.fingerprint_state_dict(tiny_sd, "wan")
    assert weights.fingerprints_match(weights.fingerprint_state_dict(scaled, "wan", num_layers=2), reference)
    unscaled = {k: v for k, v in scaled.items() if not k.endswith("scale_weight")}
    unscaled_print = weights.fingerprint_state_dict(unscaled, "wan", num_layers=2)
    assert not weights.fingerprints_match(unscaled_print, reference)


def test_lora_patched_model_fingerprints_as_its_base_loaded_or_not(model):
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    lora = model.clone()
    delta = seeded((256, 256), 7) * 0.5  # a strong LoRA-like change of q
    lora.add_patches({key: ("diff", (delta,))}, strength_patch=1.0)
    patch = pack_module("nodes.patching")
    base = patch.model_fingerprint(model)
    assert patch.model_fingerprint(lora) == base  # not loaded: the module holds the base weights
    lora.patch_model()
    try:
        live = lora.model.get_parameter(key)
        assert not torch.allclose(live, model.backup[key].weight)  # the patch is applied in place ...
        assert patch.model_fingerprint(lora) == base  # ... and the fingerprint still reads the base
        assert patch.model_fingerprint(model) == base  # (clones share the backup)
    finally:
        lora.unpatch_model()
    clone, _ = trained_clone(model)
    (_, report) = run_node("ReHyAtPatchModel", model=lora, phi=_phi_of(clone), **WIDGETS)
    assert "φ loaded" in report


def _phi_of(clone):
    weights = pack_module("rehyat.weights")
    info = pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone)
    patch = pack_module("nodes.patching")
    return weights.PhiWeights(info.config, info.blocks, weights.BaseModelInfo(256, 2, 2),
                              patch.model_fingerprint(clone), weights.collect_phi_tensors(info.hybrid))


def test_comfyui_quantized_tensors_fingerprint_as_their_values(tiny_sd):
    import_comfyui()
    from comfy.quant_ops import QuantizedTensor

    weights = pack_module("rehyat.weights")
    quantized = {}
    for key, value in tiny_sd.items():  # ComfyUI's mixed-precision (per-layer quantized) weights
        if key.endswith(".weight") and value.ndim == 2:
            scale = (value.abs().max() / 448.0).reshape(())
            quantized[key] = QuantizedTensor.from_float(value, "TensorCoreFP8Layout", scale=scale,
                                                        dtype=torch.float8_e4m3fn)
        else:
            quantized[key] = value
    assert type(quantized["blocks.0.self_attn.q.weight"]) is QuantizedTensor
    reference = weights.fingerprint_state_dict(tiny_sd, "wan")
    assert weights.fingerprints_match(weights.fingerprint_state_dict(quantized, "wan"), reference)
