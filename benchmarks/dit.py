"""Peak memory of one Wan DiT forward: softmax vs ReHyAt parallel vs ReHyAt recurrent (JSON out).

A reduced-depth Wan2.1 of real width (dim 1536, 12 heads × 128, ffn 8960) is built with the
original key names and loaded through real ComfyUI (``python scripts/provision_comfyui.py``
first). Every (mode, frames) case runs in its own process; its working memory is the peak RSS
during one forward minus the RSS after the model, inputs and a warm-up on a 1-frame latent were
in place (so library initialisation and weights are not counted).

    python benchmarks/dit.py [--frames 21 41 81 161] [--layers 2] [--latent-hw 16 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from rehyat.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
MODES = ("softmax", "parallel", "recurrent")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so loading the model is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    """Peak RSS since the last reset (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(mode: str, frames: int, layers: int, hw: tuple[int, int]) -> dict:
    """One forward in this process; returns its memory and time."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from comfy_support import load_tiny_wan_comfy, tiny_wan_state_dict

    from rehyat.config import ConversionConfig
    from rehyat.integrations.comfyui_wan import patch_comfy_wan

    torch.manual_seed(0)
    patcher = load_tiny_wan_comfy(tiny_wan_state_dict(dim=1536, ffn_dim=8960, num_layers=layers, seed=0))
    model = patcher if mode == "softmax" else patch_comfy_wan(patcher, ConversionConfig(), forward_mode=mode)
    model.patch_model()
    context = torch.randn(1, 512, 4096)
    latent = torch.randn(1, 16, frames, *hw)
    options = {"wrappers": model.wrappers}
    sigma = torch.tensor([0.7])
    with torch.inference_mode():
        model.model.apply_model(latent[:, :, :1], sigma, c_crossattn=context, transformer_options=options)
        import gc

        gc.collect()
        baseline = _rss_mib()
        _reset_peak()
        start = time.perf_counter()
        out = model.model.apply_model(latent, sigma, c_crossattn=context, transformer_options=options)
        seconds = time.perf_counter() - start
    peak = _peak_mib()
    return {"mode": mode, "frames": frames, "tokens": frames * (hw[0] // 2) * (hw[1] // 2),
            "seconds": seconds, "baseline_mib": baseline, "peak_rss_mib": peak,
            "working_mib": peak - baseline, "finite": bool(torch.isfinite(out).all())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 41, 81, 161])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--latent-hw", type=int, nargs=2, default=[16, 16])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    hw = tuple(args.latent_hw)
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]), args.layers, hw)))
        return 0
    cases = []
    for mode in args.modes:
        for frames in args.frames:
            print(f"[dit] {mode} {frames} frames", file=sys.stderr)
            cmd = [sys.executable, __file__, "--child", mode, str(frames), "--layers", str(args.layers),
                   "--latent-hw", *map(str, hw)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # RSS follows live tensors
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    for mode in args.modes:
        mem = [c["working_mib"] for c in cases if c["mode"] == mode]
        summary[mode] = {"working_mib_min": min(mem), "working_mib_max": max(mem),
                         "relative_spread": (max(mem) - min(mem)) / max(min(mem), 1e-9)}
    report = {"config": {"dim": 1536, "heads": 12, "ffn_dim": 8960, "layers": args.layers,
                         "latent_hw": list(hw), "tokens_per_frame": (hw[0] // 2) * (hw[1] // 2),
                         "chunk_frames": 3, "overlap_frames": 1, "dtype": "float32"},
              "memory_method": ("per-process peak RSS (VmHWM, reset before the forward) minus RSS after "
                                "model, inputs and a 1-frame warm-up; MALLOC_MMAP_THRESHOLD_=131072 so "
                                "freed blocks above 128 KiB return to the OS"),
              "cases": cases, "summary": summary, "machine": platform.platform(),
              "python": platform.python_version()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
