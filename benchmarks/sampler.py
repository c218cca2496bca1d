"""Chunked sampling of a real-width Wan2.1 through real ComfyUI: peak working memory and seconds per step.

Cases, each (case, video length) in its own process, all on one 2-block Wan2.1 of real width (dim
1536, 12 heads × 128, ffn 8960, original key names, loaded by ComfyUI; ``python
scripts/provision_comfyui.py`` first), the same seed, sampler, scheduler, steps and cfg:

- ``streaming`` / ``sweep``: the ReHyAt Chunked Sampler (``nodes.sampling_comfy.run_chunked_ksampler``)
  on the ReHyAt-patched model (every block converted, causal, Tc = 3, To = 1, recurrent forward);
- ``softmax``: the stock KSampler (``comfy.sample.sample``) on the unpatched softmax model;
- ``windows``: ComfyUI core's ``WanContextWindowsManual`` node (present in ComfyUI 0.3.75;
  ``context_length`` 81 video frames, ``context_overlap`` 16, static standard schedule, pyramid
  fusion) on the softmax model, then the stock KSampler.
- ``extend`` (opt-in, ``--cases extend``): the Chunked Sampler with ``save_state`` on the first
  whole chunks (about half the clip), then ReHyAt Extend Clip for the rest (timed: reading the
  state file included), against one streaming run of the whole clip in the same process; reports
  seconds per latent frame of both, their ratio and whether the clips are bit-identical (when the
  clip is whole chunks).

Working memory is the process's peak RSS during sampling minus its RSS after the model, inputs and a
1-step warm-up on a 1-latent-frame clip were in place (``benchmarks/dit.py``'s method and helpers).
FLOPs are counted with ``torch.utils.flop_counter`` during the timed run (its per-op bookkeeping is
microseconds against kernels of milliseconds to seconds, and every case pays it; ``--no-flops``
turns it off).

    python benchmarks/sampler.py [--frames 81 161 321 481] [--steps 2] [--cfg 5] [--out FILE]
    python benchmarks/sampler.py --tiny          # seconds: 1-head model, 32×48 pixels (tests)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dit import _peak_mib, _reset_peak, _rss_mib  # benchmarks/dit.py: per-process memory helpers

from rehyat.atomic import atomic_write_bytes
from rehyat.video_latent import latent_frame_count, video_latent_shape

ROOT = Path(__file__).resolve().parent.parent
CASES = ("streaming", "sweep", "softmax", "windows")
EXTRA_CASES = ("extend",)  # opt-in
PATCH = 2  # Wan2.1 patches 2×2 latent pixels into one token


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration (shared by every case of a run)."""

    dim: int = 1536
    ffn_dim: int = 8960
    layers: int = 2
    height: int = 320  # pixels
    width: int = 480
    text_len: int = 512
    steps: int = 2
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "simple"
    seed: int = 0
    window_frames: int = 81  # WanContextWindowsManual context_length (video frames)
    window_overlap: int = 16  # its context_overlap (video frames)
    count_flops: bool = True

    @property
    def latent_hw(self) -> tuple[int, int]:
        return video_latent_shape(1, self.height, self.width, exact=False)[2:]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.latent_hw
        return (h // PATCH) * (w // PATCH)


TINY = Setup(dim=128, ffn_dim=256, layers=2, height=32, width=48, text_len=8, steps=2, cfg=5.0,
             window_frames=9, window_overlap=4)


# ----------------------------------------------------------------------------------- child process


def _comfy_nodes_module(comfy_root: Path) -> None:
    """Import ComfyUI's own ``nodes.py`` as ``nodes`` (core extras import it; never the pack's)."""
    if "nodes" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("nodes", comfy_root / "nodes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = module
    spec.loader.exec_module(module)


class _Case:
    """Builds the model of a case and samples a latent with it (the same call for warm-up and run)."""

    def __init__(self, case: str, setup: Setup):
        sys.path.insert(0, str(ROOT / "tests"))
        import torch
        from comfy_support import import_comfyui, load_tiny_wan_comfy, tiny_wan_state_dict

        comfy_root = import_comfyui().root
        import comfy.sample
        from nodes_support import pack_module

        self.torch, self.case, self.setup = torch, case, setup
        self.comfy_sample = comfy.sample
        torch.manual_seed(setup.seed)
        patcher = load_tiny_wan_comfy(tiny_wan_state_dict(dim=setup.dim, ffn_dim=setup.ffn_dim,
                                                          num_layers=setup.layers, seed=setup.seed))
        if case in ("streaming", "sweep"):
            config = pack_module("rehyat.config")
            patch = pack_module("rehyat.integrations.comfyui_wan")
            self.model = patch.patch_comfy_wan(patcher, config.ConversionConfig(), forward_mode="recurrent")
            self.chunked = pack_module("nodes.sampling_comfy").run_chunked_ksampler
        elif case == "windows":
            _comfy_nodes_module(comfy_root)
            from comfy.context_windows import ContextFuseMethods, ContextSchedules
            from comfy_extras.nodes_context_windows import WanContextWindowsManualNode

            self.model = WanContextWindowsManualNode.execute(
                patcher, context_length=setup.window_frames, context_overlap=setup.window_overlap,
                context_schedule=ContextSchedules.STATIC_STANDARD, context_stride=1, closed_loop=False,
                fuse_method=ContextFuseMethods.PYRAMID,
            ).result[0]
        else:
            self.model = patcher
        gen = torch.Generator().manual_seed(setup.seed + 1)
        self.positive = [[torch.randn(1, setup.text_len, 4096, generator=gen), {}]]
        self.negative = [[torch.randn(1, setup.text_len, 4096, generator=gen), {}]]
        self.stats: dict[str, Any] = {}

    def sample(self, frames: int, steps: int):
        """Sample an empty (zero) latent of ``frames`` latent frames; returns the denoised latent."""
        s, torch = self.setup, self.torch
        latent = torch.zeros(1, 16, frames, *s.latent_hw)
        if self.case in ("streaming", "sweep"):
            out, _ = self.chunked(self.model, s.seed, steps, s.cfg, s.sampler, s.scheduler, self.positive,
                                  self.negative, {"samples": latent}, 1.0, order=self.case,
                                  state_device="auto", vae=None, save_frames=False, disable_pbar=True)
            self.stats = out.get("rehyat_stats", {})
            return out["samples"]
        noise = self.comfy_sample.prepare_noise(latent, s.seed)
        return self.comfy_sample.sample(self.model, noise, steps, s.cfg, s.sampler, s.scheduler,
                                        self.positive, self.negative, latent, denoise=1.0, disable_pbar=True,
                                        seed=s.seed)


def run_case(case: str, video_frames: int, setup: Setup) -> dict:
    """Warm up, then time one sampling run in this process; returns its figures."""
    runner = _Case(case, setup)
    torch = runner.torch
    frames = latent_frame_count(video_frames)
    with torch.inference_mode():
        runner.sample(1, 1)  # warm-up: weights resident, kernels and allocator initialised
        gc.collect()
        baseline = _rss_mib()
        counter = _flop_counter() if setup.count_flops else None
        _reset_peak()
        start = time.perf_counter()
        with counter if counter is not None else nullcontext():
            samples = runner.sample(frames, setup.steps)
        seconds = time.perf_counter() - start
        peak = _peak_mib()
        stats = dict(runner.stats)
    flops = counter.get_total_flops() // setup.steps if counter is not None else None
    h, w = setup.latent_hw
    latent_mib = 16 * frames * h * w * 4 / 2**20
    return {
        "case": case, "video_frames": video_frames, "latent_frames": frames,
        "tokens": frames * setup.tokens_per_frame, "steps": setup.steps,
        "seconds": seconds, "seconds_per_step": seconds / setup.steps,
        "baseline_mib": baseline, "peak_rss_mib": peak, "working_mib": peak - baseline,
        "latent_mib": latent_mib, "state_store_mib": stats.get("state_store_mib"),
        "flops_per_step": flops, "finite": bool(torch.isfinite(samples).all()),
    }


def run_extend_case(video_frames: int, setup: Setup) -> dict:
    """Extend a saved clip vs one streaming run of the whole clip, timed in this process."""
    import tempfile

    runner = _Case("streaming", setup)
    torch, s = runner.torch, setup
    import folder_paths
    from nodes_support import pack_module

    extend = pack_module("nodes.sampling_extend").run_extend_clip
    tc = 3
    frames = latent_frame_count(video_frames)
    first = tc * max(1, (frames // 2) // tc)
    if frames <= first:
        raise SystemExit(f"--frames {video_frames}: the extend case needs more than {first} latent frames")

    def chunked(count: int, save_state: bool) -> dict:
        latent = {"samples": torch.zeros(1, 16, count, *s.latent_hw)}
        out, _ = runner.chunked(runner.model, s.seed, s.steps, s.cfg, s.sampler, s.scheduler,
                                runner.positive, runner.negative, latent, 1.0, order="streaming",
                                state_device="auto", vae=None, save_frames=False, disable_pbar=True,
                                save_state=save_state)
        return out

    whole_chunks = frames % tc == 0
    with tempfile.TemporaryDirectory(prefix="rehyat-extend-") as tmp, torch.inference_mode():
        folder_paths.output_directory = tmp
        runner.sample(1, 1)  # warm-up
        start = time.perf_counter()
        one_run = chunked(frames, save_state=whole_chunks)  # per-frame noise when it can be compared
        one_run_seconds = time.perf_counter() - start
        saved = chunked(first, save_state=True)
        resume_mib = os.path.getsize(saved["rehyat_resume"]) / 2**20
        start = time.perf_counter()
        extended, _ = extend(runner.model, runner.positive, runner.negative, saved, frames - first,
                             disable_pbar=True, save_frames=False)
        extend_seconds = time.perf_counter() - start
        equal = bool(torch.equal(extended["samples"], one_run["samples"])) if whole_chunks else None
    per_frame_one = one_run_seconds / frames
    per_frame_extend = extend_seconds / (frames - first)
    return {
        "case": "extend", "video_frames": video_frames, "latent_frames": frames, "first_frames": first,
        "extra_frames": frames - first, "steps": s.steps, "one_run_seconds": one_run_seconds,
        "extend_seconds": extend_seconds, "one_run_seconds_per_frame": per_frame_one,
        "extend_seconds_per_frame": per_frame_extend, "per_frame_ratio": per_frame_extend / per_frame_one,
        "equal_to_one_run": equal, "resume_file_mib": resume_mib,
        "finite": bool(torch.isfinite(extended["samples"]).all()),
    }


def _flop_counter() -> Any:
    """A ``FlopCounterMode`` that also counts the CPU flash-attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    from rehyat.flops import register_cpu_flash_flop_formula

    register_cpu_flash_flop_formula()
    return FlopCounterMode(display=False)


# ---------------------------------------------------------------------------------- parent process


def summarise(cases: list[dict], frames: list[int]) -> dict:
    """Ratios and targets of the issue from the measured cases (nothing is measured here)."""
    by = {(c["case"], c["video_frames"]): c for c in cases}
    rows = []
    for f in frames:
        row: dict[str, Any] = {"video_frames": f}
        for case in CASES:
            c = by.get((case, f))
            if c is not None:
                row[f"{case}_working_mib"] = c["working_mib"]
                row[f"{case}_seconds_per_step"] = c["seconds_per_step"]
        stream, windows = by.get(("streaming", f)), by.get(("windows", f))
        if stream and windows:
            speedup = windows["seconds_per_step"] / stream["seconds_per_step"]
            row["speedup_streaming_vs_windows"] = speedup
            row["streaming_below_windows_memory"] = stream["working_mib"] < windows["working_mib"]
            if stream["flops_per_step"] and windows["flops_per_step"]:
                ratio = windows["flops_per_step"] / stream["flops_per_step"]
                row["flop_ratio_windows_vs_streaming"] = ratio
                row["efficiency_vs_flop_ratio"] = speedup / ratio
        rows.append(row)
    summary: dict[str, Any] = {"per_length": rows}
    extensions = [c for c in cases if c["case"] == "extend"]
    if extensions:
        summary["extend_per_frame_ratio"] = {str(c["video_frames"]): c["per_frame_ratio"] for c in extensions}
        summary["extend_bit_identical"] = all(c["equal_to_one_run"] is not False for c in extensions)
    for case in ("streaming", "sweep"):
        mem = [by[(case, f)]["working_mib"] for f in frames if (case, f) in by]
        if len(mem) > 1:
            summary[f"{case}_working_spread"] = (max(mem) - min(mem)) / max(min(mem), 1e-9)
    if "streaming_working_spread" in summary:
        summary["streaming_flat_within_10_percent"] = summary["streaming_working_spread"] <= 0.10
    sweep = [by[("sweep", f)] for f in frames if ("sweep", f) in by]
    if len(sweep) > 1:
        first, last = sweep[0], sweep[-1]
        growth = last["working_mib"] - first["working_mib"]
        summary["sweep_growth_mib"] = growth
        summary["sweep_growth_in_latents"] = growth / last["latent_mib"]  # latent-sized buffers
    below = [r["streaming_below_windows_memory"] for r in rows if "streaming_below_windows_memory" in r]
    if below:
        summary["streaming_below_windows_at_every_length"] = all(below)
    longest = rows[-1] if rows else {}
    if "speedup_streaming_vs_windows" in longest:
        summary["longest_speedup_vs_windows"] = longest["speedup_streaming_vs_windows"]
        summary["longest_meets_1_6x"] = longest["speedup_streaming_vs_windows"] >= 1.6
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", help="video frames (1 + 4k); default 81 161 321 481")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES + EXTRA_CASES,
                        help="default: the four comparison cases; 'extend' is opt-in")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float)
    parser.add_argument("--sampler")
    parser.add_argument("--softmax-max-frames", type=int, default=161,
                        help="longest clip the quadratic softmax case runs (default 161)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting pass")
    parser.add_argument("--tiny", action="store_true", help="1-head 128-wide model at 32×48 (smoke test)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="video size in pixels, multiples of 16 (default 320 480)")
    parser.add_argument("--layers", type=int, help="DiT blocks (default 2)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (atomically)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "FRAMES", "SETUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup = Setup(**json.loads(args.child[2]))
        run = run_extend_case if args.child[0] == "extend" else None
        result = run(int(args.child[1]), setup) if run else run_case(args.child[0], int(args.child[1]), setup)
        print(json.dumps(result))
        return 0

    setup = TINY if args.tiny else Setup()
    overrides = {"steps": args.steps, "cfg": args.cfg, "sampler": args.sampler, "layers": args.layers}
    if args.size:
        if any(v < 16 or v % 16 for v in args.size):
            parser.error(f"--size must be multiples of 16 pixels (VAE 8× and 2×2 patches); got {args.size}")
        overrides.update(height=args.size[0], width=args.size[1])
    setup = replace(setup, **{k: v for k, v in overrides.items() if v is not None},
                    count_flops=not args.no_flops)
    frames = args.frames or ([9, 17] if args.tiny else [81, 161, 321, 481])
    bad = [f for f in frames if f < 1 or (f - 1) % 4]
    if bad:
        parser.error(f"--frames must be 1 + 4k video frames (Wan2.1's VAE); got {bad}")
    cases = []
    for case in args.cases:
        for f in frames:
            if case == "softmax" and f > args.softmax_max_frames:
                continue
            print(f"[sampler] {case} {f} video frames", file=sys.stderr)
            cmd = [sys.executable, __file__, "--child", case, str(f), json.dumps(asdict(setup))]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # RSS follows live tensors
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[sampler] {json.dumps(cases[-1])}", file=sys.stderr)  # partial results survive a stop
    report = {
        "config": {**asdict(setup), "latent_hw": list(setup.latent_hw),
                   "tokens_per_frame": setup.tokens_per_frame, "heads": setup.dim // 128, "head_dim": 128,
                   "chunk_frames": 3, "overlap_frames": 1, "video_frames": frames, "cases": args.cases,
                   "softmax_max_frames": args.softmax_max_frames,
                   "dtype": "float32", "device": "cpu", "state_device": "auto"},
        "memory_method": ("per-process peak RSS (VmHWM, reset before sampling) minus RSS after model, "
                          "conditioning and a 1-step warm-up on a 1-latent-frame clip; "
                          "MALLOC_MMAP_THRESHOLD_=131072 so freed blocks above 128 KiB return to the OS"),
        "timing_method": ("wall-clock seconds of the whole sampling call (all steps, cfg evaluations, "
                          "chunks) divided by steps; FLOPs counted by torch.utils.flop_counter during "
                          "the same run (all cases), per step"),
        "windows_node": "comfy_extras.nodes_context_windows.WanContextWindowsManual (ComfyUI core)",
        "cases": cases, "summary": summarise(cases, frames), "machine": platform.platform(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
