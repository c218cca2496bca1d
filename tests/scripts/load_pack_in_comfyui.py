"""Run inside a real ComfyUI root (cwd): load this pack as ComfyUI does and use its nodes.

Usage: python load_pack_in_comfyui.py <custom_node_dir> <tests_dir> <base_directory>; prints a JSON
report. ``base_directory`` is ComfyUI's ``--base-directory`` (models/, output/ go there).

Besides the deprecated ReHyAtPatchWan on untrained φ, it runs the φ journey through the registered
node classes, with ComfyUI's own KSampler: Patch Model → Save φ → Load φ (file listed, loaded) →
Patch Model with the φ → KSampler, on a conditioning that went through Save / Load Conditioning,
and compares it with KSampler on the model the φ were saved from.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.getcwd())  # the ComfyUI root, as when ComfyUI runs main.py
import comfy.cli_args  # noqa: E402

pack_dir, tests_dir, base_directory = sys.argv[1], sys.argv[2], sys.argv[3]
comfy.cli_args.args.cpu = True
comfy.cli_args.args.use_pytorch_cross_attention = True
comfy.cli_args.args.base_directory = base_directory  # read when folder_paths is first imported
import torch  # noqa: E402

import nodes  # noqa: E402  (ComfyUI's nodes.py)

loaded = asyncio.run(nodes.load_custom_node(pack_dir))
node_cls = nodes.NODE_CLASS_MAPPINGS.get("ReHyAtPatchWan")
report = {"loaded": loaded, "node_registered": node_cls is not None,
          "node_ids": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("ReHyAt"))}


def execute(node_id: str, **inputs):
    return nodes.NODE_CLASS_MAPPINGS[node_id].execute(**inputs).result


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


if node_cls is not None:
    import folder_paths

    sys.path.insert(1, tests_dir)
    from comfy_support import load_tiny_wan_comfy, tiny_wan_state_dict

    report["rehyat_folder"] = folder_paths.get_folder_paths("rehyat")
    schema = node_cls.define_schema()
    report["inputs"] = [i.id for i in schema.inputs]
    patcher = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))
    out = node_cls.execute(model=patcher, phi_file=schema.inputs[1].options[0], num_blocks=30,
                           placement="last", chunk_frames=2, overlap_frames=1, causal=True,
                           forward_mode="recurrent")
    clone = out.result[0]
    report["clone_is_new"] = clone is not patcher
    report["patched_blocks"] = sorted(clone.object_patches)
    latent = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(1))
    clone.patch_model()
    try:
        with torch.inference_mode():
            y = clone.model.apply_model(latent, torch.tensor([0.7]), c_crossattn=context,
                                        transformer_options={"wrappers": clone.wrappers})
    finally:
        clone.unpatch_model()
    report["output_finite"] = bool(torch.isfinite(y).all())
    report["output_shape"] = list(y.shape)

    # The φ journey, through the registered classes.
    widgets = dict(num_blocks=2, placement="last", chunk_frames=2, overlap_frames=1, causal=True,
                   forward_mode="recurrent")
    trained, _ = execute("ReHyAtPatchModel", model=patcher, **widgets)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in trained.attachments["rehyat"].hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    (phi_name,) = execute("ReHyAtSavePhi", model=trained, filename_prefix="rehyat_test_journey")
    load_schema = nodes.NODE_CLASS_MAPPINGS["ReHyAtLoadPhi"].define_schema()
    report["phi_saved"] = phi_name
    report["phi_listed"] = phi_name in load_schema.inputs[0].options
    report["phi_on_disk"] = os.path.isfile(os.path.join(base_directory, "models", "rehyat", phi_name))
    phi, info = execute("ReHyAtLoadPhi", phi_file=phi_name)
    fresh = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))
    from_file, patch_report = execute("ReHyAtPatchModel", model=fresh, phi=phi, **widgets)
    report["patch_report"] = patch_report

    positive = [[seeded((1, 8, 4096), 4), {"pooled_output": None}]]
    negative = [[seeded((1, 8, 4096), 5), {"pooled_output": None}]]
    (pos_name,) = execute("ReHyAtSaveConditioning", conditioning=positive, filename_prefix="rehyat_test_pos")
    (neg_name,) = execute("ReHyAtSaveConditioning", conditioning=negative, filename_prefix="rehyat_test_neg")
    (pos,) = execute("ReHyAtLoadConditioning", conditioning_file=pos_name)
    (neg,) = execute("ReHyAtLoadConditioning", conditioning_file=neg_name)
    empty = {"samples": torch.zeros(1, 16, 5, 8, 8)}
    ksampler = nodes.NODE_CLASS_MAPPINGS["KSampler"]()
    args = dict(seed=0, steps=2, cfg=3.0, sampler_name="euler", scheduler="simple", latent_image=empty)
    (from_file_out,) = ksampler.sample(model=from_file, positive=pos, negative=neg, **args)
    (trained_out,) = ksampler.sample(model=trained, positive=positive, negative=negative, **args)
    (stock_out,) = ksampler.sample(model=fresh, positive=pos, negative=neg, **args)
    a, b = from_file_out["samples"], trained_out["samples"]
    report["journey_finite"] = bool(torch.isfinite(a).all())
    report["journey_identical"] = bool(torch.equal(a, b))
    report["journey_differs_from_stock"] = not torch.allclose(a, stock_out["samples"])
print(json.dumps(report))
