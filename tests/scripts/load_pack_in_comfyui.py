"""Run inside a real ComfyUI root (cwd): load this pack as ComfyUI does and use its node.

Usage: python load_pack_in_comfyui.py <custom_node_dir> <tests_dir>; prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.getcwd())  # the ComfyUI root, as when ComfyUI runs main.py
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
comfy.cli_args.args.use_pytorch_cross_attention = True
import torch  # noqa: E402

import nodes  # noqa: E402  (ComfyUI's nodes.py)

pack_dir, tests_dir = sys.argv[1], sys.argv[2]
loaded = asyncio.run(nodes.load_custom_node(pack_dir))
node_cls = nodes.NODE_CLASS_MAPPINGS.get("ReHyAtPatchWan")
report = {"loaded": loaded, "node_registered": node_cls is not None}
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
print(json.dumps(report))
