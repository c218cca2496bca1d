"""Wan2.1 I2V-14B / FLF2V-14B at real width through the ReHyAt Chunked Sampler: exact against stock?

Random weights with ComfyUI's key names at the 14B width (dim 5120, 40 heads × 128, ffn 13824;
``--layers`` blocks, default 2), the 36-channel patch embedding, ``img_emb`` for CLIP-H features
(257 tokens; 2 × 257 with FLF2V's position embedding), every block ReHyAt (Tc = 2, To = 1, random φ),
conditioned by ComfyUI's stock ``WanImageToVideo`` / ``WanFirstLastFrameToVideo`` with the Wan VAE:
the Chunked Sampler in both orders against the stock KSampler on the same model, 17 video frames at
32×32, euler, 3 steps, cfg 4. Prints JSON (``equal`` is ``torch.equal``); exit code 1 if any differ.

    python scripts/check_image_conditioned_real_width.py            # ≈ 5 min, ≈ 9 GiB on the CPU
    python scripts/check_image_conditioned_real_width.py --dim 128 --ffn 256   # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SIZE, LENGTH, STEPS, CFG, SEED = 32, 17, 3, 4.0, 3  # 17 video frames → 5 latent frames of 4×4


def randn(shape: tuple[int, ...], seed: int):
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def check(kind: str, dim: int, ffn: int, layers: int) -> dict:
    """Sample one clip of ``kind`` ("i2v" | "flf2v") with stock and chunked samplers; the comparison."""
    import torch
    from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy
    from nodes_support import pack_module
    from sampler_support import patch_with_random_phi, stock_wan_nodes, tiny_wan_i2v_state_dict, vision_output
    from vae_support import load_tiny_wan_vae

    started = time.perf_counter()
    chunked = pack_module("nodes.sampling_comfy").run_chunked_ksampler  # imports ComfyUI (CPU mode)
    import comfy.sample

    nodes_wan = stock_wan_nodes()
    with torch.inference_mode():
        state = tiny_wan_i2v_state_dict(dim=dim, ffn_dim=ffn, num_layers=layers,
                                        flf_tokens=514 if kind == "flf2v" else None)
        model = patch_with_random_phi(load_tiny_wan_comfy(state), phi_seed=9)
        del state
        wan = model.get_model_object("diffusion_model")
        vae = load_tiny_wan_vae()
        positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
        negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
        size, length = SIZE, LENGTH
        start = randn((1, size, size, 3), 4).sigmoid()
        if kind == "i2v":
            positive, negative, latent = nodes_wan.WanImageToVideo.execute(
                positive, negative, vae, size, size, length, 1, start_image=start,
                clip_vision_output=vision_output(6)).result
        else:
            end = randn((1, size, size, 3), 5).sigmoid()
            positive, negative, latent = nodes_wan.WanFirstLastFrameToVideo.execute(
                positive, negative, vae, size, size, length, 1, start_image=start, end_image=end,
                clip_vision_start_image=vision_output(6),
                clip_vision_end_image=vision_output(7)).result
        steps, cfg, seed = STEPS, CFG, SEED
        noise = comfy.sample.prepare_noise(latent["samples"], seed)
        stock = comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative,
                                    latent["samples"], seed=seed, disable_pbar=True)
        orders = {}
        for order in ("streaming", "sweep"):
            out, _ = chunked(model, seed, steps, cfg, "euler", "simple", positive, negative, latent,
                             order=order, disable_pbar=True)
            orders[order] = {"equal": bool(torch.equal(out["samples"], stock)),
                             "max_abs_difference": float((out["samples"] - stock).abs().max())}
    return {
        "kind": kind, "dim": int(wan.dim), "heads": int(wan.num_heads), "layers": len(wan.blocks),
        "in_channels": int(wan.patch_embedding.weight.shape[1]),
        "clip_tokens": int(positive[0][1]["clip_vision_output"].penultimate_hidden_states.shape[1]),
        "flf_position_embedding": getattr(wan.img_emb, "emb_pos", None) is not None,
        "orders": orders, "finite": bool(torch.isfinite(stock).all()),
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5120, help="model width (14B: 5120)")
    parser.add_argument("--ffn", type=int, default=13824, help="FFN width (14B: 13824)")
    parser.add_argument("--layers", type=int, default=2, help="DiT blocks (default 2)")
    parser.add_argument("--kinds", nargs="+", default=["i2v", "flf2v"], choices=["i2v", "flf2v"])
    args = parser.parse_args()
    if args.dim % 128 or args.dim < 128:
        parser.error(f"--dim must be a positive multiple of 128 (heads of 128); got {args.dim}")
    results = [check(kind, args.dim, args.ffn, args.layers) for kind in args.kinds]
    print(json.dumps({"cases": results}, indent=2))
    exact = all(o["equal"] for r in results for o in r["orders"].values())
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
