#!/usr/bin/env python3
"""The sampler part of ``python -m rehyat gpu-check`` (run by it; needs a ComfyUI install).

One sampling step of a random-weight Wan2.1 of the configured size through real ComfyUI: the ReHyAt
Chunked Sampler (streaming, ``state_device=auto``) on the ReHyAt-patched model vs ComfyUI core's
WanContextWindowsManual (81-frame windows, overlap 16, static standard schedule, pyramid fusion) on
the softmax model. Each case is warmed up on a 1-latent-frame clip, then timed (CUDA: synchronised
wall clock; CPU: wall clock) with its peak memory (CUDA: ``max_memory_allocated`` after a reset;
CPU: the process's lifetime peak RSS, not per case). Prints the gpu-check part protocol
(``{"case": ...}`` lines, see ``rehyat/gpu_check/guard.py``).

    python scripts/gpu_check_sampler.py CONFIG_JSON SECONDS COMFYUI_ROOT
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK = "comfyui_rehyat_gpu_check"


def import_comfyui(root: Path, cpu: bool):
    """Put ComfyUI on the path and import it (CPU mode when ``cpu``), PyTorch SDPA attention.

    The repository root leaves ``sys.path`` first: its ``nodes`` package would shadow ComfyUI's
    ``nodes.py`` (the pack is imported as a package instead, :func:`import_pack`).
    """
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    sys.path.append(str(root))
    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = cpu
    cli_args.args.use_pytorch_cross_attention = True
    importlib.import_module("comfy.model_management")


def import_pack():
    """The repository imported as a custom-node package (its nodes import the core relatively)."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


def peak_mib(torch, device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's lifetime peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    config, seconds, comfy_root = json.loads(argv[0]), float(argv[1]), Path(argv[2])
    deadline = time.monotonic() + seconds
    cpu = config["device"] == "cpu"
    import_comfyui(comfy_root, cpu)
    import comfy.sample
    import comfy.sd
    import torch
    from comfy.context_windows import ContextFuseMethods, ContextSchedules
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode

    pack = import_pack()
    sampling = importlib.import_module(f"{PACK}.nodes.sampling_comfy")
    wan = importlib.import_module(f"{PACK}.rehyat.models.wan")
    conversion = importlib.import_module(f"{PACK}.rehyat.config").ConversionConfig()
    patch = importlib.import_module(f"{PACK}.rehyat.integrations.comfyui_wan").patch_comfy_wan
    del pack

    dim = config["sampler_dim"]
    device = torch.device(config["device"])
    dtype = torch.float32 if cpu else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = wan.WanDiT(wan.WanDiTConfig(dim=dim, ffn_dim=config["sampler_ffn_dim"], num_heads=dim // 128,
                                            num_layers=config["sampler_layers"]))
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    del model
    patcher = comfy.sd.load_diffusion_model_state_dict(state)
    del state
    height, width = config["sampler_size"]
    frames = 1 + (config["sampler_video_frames"] - 1) // 4
    gen = torch.Generator().manual_seed(1)
    text = config["sampler_text_len"]
    positive = [[torch.randn(1, text, 4096, generator=gen), {}]]
    negative = [[torch.randn(1, text, 4096, generator=gen), {}]]
    steps, cfg = config["steps"], config["cfg"]
    windows = WanContextWindowsManualNode.execute(
        patcher, context_length=81, context_overlap=16, context_schedule=ContextSchedules.STATIC_STANDARD,
        context_stride=1, closed_loop=False, fuse_method=ContextFuseMethods.PYRAMID).result[0]
    streaming = patch(patcher, conversion, forward_mode="recurrent")

    def sample(case: str, latent_frames: int) -> dict:
        latent = torch.zeros(1, 16, latent_frames, height // 8, width // 8)
        if case == "streaming":
            out, _ = sampling.run_chunked_ksampler(
                streaming, 0, steps, cfg, "euler", "simple", positive, negative, {"samples": latent}, 1.0,
                order="streaming", state_device="auto", vae=None, save_frames=False, disable_pbar=True)
            return {"state_store_mib": out["rehyat_stats"]["state_store_mib"],
                    "finite": bool(torch.isfinite(out["samples"]).all())}
        noise = comfy.sample.prepare_noise(latent, 0)
        out = comfy.sample.sample(windows, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                  denoise=1.0, disable_pbar=True, seed=0)
        return {"finite": bool(torch.isfinite(out).all())}

    for case in ("streaming", "context_windows"):
        if time.monotonic() > deadline:
            print(json.dumps({"skipped": f"time guard: stopped before {case}"}), flush=True)
            return 0
        with torch.inference_mode():
            sample(case, 1)  # warm-up: weights resident, kernels initialised
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            extra = sample(case, frames)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
        print(json.dumps({"case": {
            "case": case, "video_frames": config["sampler_video_frames"], "latent_frames": frames,
            "size": [height, width], "steps": steps, "cfg": cfg, "seconds": elapsed,
            "seconds_per_step": elapsed / steps, "peak_memory_mib": peak_mib(torch, device),
            "memory_method": ("cuda max_memory_allocated (reset before the run)" if device.type == "cuda"
                              else "process lifetime peak RSS (not per case)"), **extra}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
