"""``python -m rehyat profile`` — FLOPs, latency and memory of softmax, ReHyAt, uniform hybrid and
ComfyUI context windows on a Wan2.1 DiT.

Analytic FLOPs for the chosen model (a preset, optionally overridden) and latent; with
``--lengths``, a sweep over video lengths; always the Tc × To sweep of the paper's Fig. 4. Without
``--analytic-only`` each case is also run — a random-weight pure-PyTorch WanDiT of the preset's
sizes, ``--measure-layers`` blocks deep, one fresh subprocess per case and length — for latency per
block and per model evaluation and peak memory. ``--out DIR`` writes profile.json, profile.txt and
the PNG plots; ``--json`` prints the JSON report instead of the table.

``--paper`` prints the paper's compute figures (Fig. 4, Tables 6 and 8) next to this profiler's
counts, as Markdown (the tables of docs/compute.md).

``--latent`` is T×H×W in the paper's notation: latent frames × the 2×2-patched token grid (16 px
per token, 1 + 4·(T − 1) video frames), so 480×832 px and 81 frames is ``21x30x52`` (1560 tokens
per frame), exactly the paper's "latent 21×30×52".
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from ..config import HybridAttentionConfig

NAME = "profile"
HELP = "FLOPs, latency and memory of softmax / ReHyAt / uniform hybrid / context windows"


_A = HybridAttentionConfig()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``profile`` options."""
    parser.add_argument("--preset", default="wan2.1-1.3b", help="model sizes: wan2.1-1.3b or wan2.1-14b")
    for flag, help_text in (("--dim", "override the preset's width"), ("--heads", "override its heads"),
                            ("--ffn-dim", "override its FFN width"), ("--layers", "override its depth"),
                            ("--text-len", "override its text tokens (512)")):
        parser.add_argument(flag, type=int, default=None, help=help_text)
    parser.add_argument("--latent", default="21x30x52",
                        help="T x H x W: latent frames x patched tokens high x wide, the paper's notation "
                             "(21x30x52 = 81 frames at 480x832)")
    parser.add_argument("--lengths", type=_int_list, default=(),
                        help="latent frame counts of the length sweep, e.g. 21,41,81 (81/161/321 frames)")
    parser.add_argument("--chunk-frames", type=int, default=_A.chunk_frames, help="Tc of the ReHyAt case")
    parser.add_argument("--overlap-frames", type=int, default=_A.overlap_frames, help="To of the ReHyAt case")
    parser.add_argument("--converted-blocks", type=int, default=None, help="ReHyAt blocks (default: all)")
    parser.add_argument("--non-causal", action="store_true", help="non-causal ReHyAt (parallel form only)")
    parser.add_argument("--form", choices=("parallel", "recurrent"), default="parallel",
                        help="ReHyAt form measured (same FLOPs)")
    parser.add_argument("--rates", type=_int_list, default=(2, 4, 8), help="uniform-hybrid rates R")
    parser.add_argument("--window-frames", type=int, default=21,
                        help="context window length in latent frames (21 = 81 video frames)")
    parser.add_argument("--window-overlap", type=int, default=4,
                        help="context window overlap in latent frames (4 = 16 video frames)")
    parser.add_argument("--no-context-windows", action="store_true", help="leave context windows out")
    parser.add_argument("--accounting", choices=("incremental", "paper"), default="incremental",
                        help="linear-part accounting: rehyat.ops' kernels, or the paper's "
                             "(see docs/compute.md)")
    parser.add_argument("--analytic-only", action="store_true", help="FLOPs only, nothing is run")
    parser.add_argument("--measure-layers", type=int, default=2,
                        help="depth of the measured model (per-block figures do not depend on it)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for measurements")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="activations (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per case (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the measuring processes")
    parser.add_argument("--out", default=None, help="directory for profile.json, profile.txt and PNG plots")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--paper", action="store_true",
                        help="print the paper's Fig. 4 / Tables 6, 8 next to our counts (Markdown); exit")


def build_request(args: argparse.Namespace):
    """The :class:`~rehyat.profiling.ProfileRequest` of the parsed options (ValueError names the option)."""
    from ..profiling import ContextWindowCase, ProfileRequest, ReHyAtCase, get_preset
    from ..profiling.presets import WanShape, parse_token_grid

    with _option("--preset"):
        shape = get_preset(args.preset)
    overrides = {field: value for field, value in (("dim", args.dim), ("num_heads", args.heads),
                                                  ("ffn_dim", args.ffn_dim), ("num_layers", args.layers),
                                                  ("text_len", args.text_len)) if value is not None}
    if overrides:
        with _option("--dim / --heads / --ffn-dim / --layers / --text-len"):
            shape = WanShape(**{**shape.to_dict(), "patch": shape.patch, **overrides,
                             "name": f"{shape.name} (custom)"})
    with _option("--latent"):
        latent = parse_token_grid(args.latent, shape.patch[1:])
    with _option("--chunk-frames / --overlap-frames / --converted-blocks / --form"):
        rehyat = ReHyAtCase(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames,
                            converted_blocks=args.converted_blocks, causal=not args.non_causal,
                            form=args.form)
    windows = None
    if not args.no_context_windows:
        with _option("--window-frames / --window-overlap"):
            windows = ContextWindowCase(args.window_frames, args.window_overlap)
    with _option("--lengths / --rates / --converted-blocks"):
        return ProfileRequest(shape, latent, rehyat, lengths=args.lengths, rates=args.rates,
                              context_windows=windows, linear_accounting=args.accounting)


@contextmanager
def _option(flags: str):
    """Prefix a ValueError raised inside with the command-line option(s) it concerns."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{flags}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Profile and print the table (or JSON); a bad option raises ValueError (reported by the CLI)."""
    from ..profiling import MeasureSpec, format_table, measure_in_subprocess, profile, write_report

    if args.paper:
        from ..profiling.paper import format_paper_comparison

        print(format_paper_comparison())
        return 0
    request = build_request(args)
    measure = None
    if not args.analytic_only:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be ≥ 1; got {args.repeats}")
        if not 1 <= args.measure_layers <= request.shape.num_layers:
            raise ValueError(f"--measure-layers must be in [1, {request.shape.num_layers}]; "
                             f"got {args.measure_layers}")
        dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

        def measure(key, case, latent):
            spec = MeasureSpec(request.shape.to_dict(), case.to_dict(),
                               [latent.frames, latent.height, latent.width], layers=args.measure_layers,
                               device=args.device, dtype=dtype, repeats=args.repeats, threads=args.threads)
            return measure_in_subprocess(spec)

    report = profile(request, measure=measure, progress=lambda m: print(f"[profile] {m}", file=sys.stderr))
    if args.out:
        for name, path in write_report(report, args.out).items():
            print(f"[profile] wrote {name}: {path}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
