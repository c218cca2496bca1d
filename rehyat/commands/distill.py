"""``python -m rehyat distill`` — stage-1 φ distillation of a Wan2.1 checkpoint (no ComfyUI needed).

Samples the original (softmax) Wan over your prompts and seeds with Euler ancestral (paper: 50 steps,
guidance 5) and, at every captured teacher forward, trains each converted block's φ to reproduce that
block's attention output (AdamW, lr 1e-3, one step per forward; blocks are independent).

Prompts: conditioning files saved by the pack's Save Conditioning node (``--conditioning``), or a text
file with one prompt per line encoded by a local umT5 encoder (``--prompts`` + ``--text-encoder``,
needs ``transformers``). The model: a Wan2.1 checkpoint in the original/ComfyUI or diffusers layout
(a .safetensors file, or a diffusers folder of shards).

Runs live in ``<runs-dir>/<run-name>``: checkpoints every N steps and on Ctrl-C; starting the same
command again resumes (a larger --iterations extends a finished run). The trained φ go to
``<run>/phi.safetensors`` (or --output), with report.json and loss_curve.png beside them.

Several GPUs / processes: ``torchrun --nproc_per_node N -m rehyat distill …`` — data-parallel over
trajectories (gloo on CPU, nccl on CUDA); --batch-size is per process.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from ..atomic import check_new_file
from ..config import PLACEMENTS, ConversionConfig
from ..training.options import DistillOptions, TeacherSampling

NAME = "distill"
HELP = "distil φ of a Wan2.1 checkpoint against its softmax attention (stage 1)"
_S, _O = TeacherSampling(), DistillOptions()
_C = ConversionConfig()
_A = _C.attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``distill`` options (defaults: the paper's)."""
    src = parser.add_argument_group("model and prompts")
    src.add_argument(
        "--model",
        required=True,
        help="Wan2.1 checkpoint: .safetensors (original/ComfyUI keys) or a diffusers folder",
    )
    src.add_argument(
        "--conditioning",
        nargs="+",
        default=[],
        metavar="FILE",
        help="conditioning files saved by Save Conditioning; one prompt each",
    )
    src.add_argument(
        "--prompts",
        metavar="FILE",
        help="text file, one prompt per line (needs --text-encoder and the 'text' extra)",
    )
    src.add_argument(
        "--text-encoder",
        metavar="DIR",
        help="local transformers umT5 encoder + tokenizer directory (encodes --prompts)",
    )
    src.add_argument("--negative-conditioning", metavar="FILE", help="negative conditioning file")
    src.add_argument(
        "--negative-prompt", default="", help="negative prompt (with --text-encoder); default ''"
    )
    src.add_argument(
        "--holdout-prompts",
        type=int,
        default=None,
        help="prompts (from the end) only used for the held-out report (default: 1 if ≥ 2 prompts)",
    )

    clip = parser.add_argument_group("teacher trajectories")
    clip.add_argument("--width", type=int, default=480, help="video width in pixels (multiple of 16)")
    clip.add_argument("--height", type=int, default=320, help="video height in pixels (multiple of 16)")
    clip.add_argument(
        "--length", type=int, default=81, help="video frames (latent frames = (length-1)/4 + 1)"
    )
    clip.add_argument("--steps", type=int, default=_S.steps, help="denoising steps per trajectory")
    clip.add_argument(
        "--cfg", type=float, default=_S.cfg, help="guidance scale (cond and uncond forwards both train)"
    )
    clip.add_argument("--shift", type=float, default=_S.shift, help="flow sigma shift")
    clip.add_argument(
        "--eta", type=float, default=_S.eta, help="ancestral noise (1 = Euler ancestral, 0 = Euler)"
    )
    clip.add_argument(
        "--capture-stride",
        type=int,
        default=_S.capture_stride,
        help="train on every k-th denoising step (1 = all)",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--iterations", type=int, default=_O.iterations, help="optimizer steps per block")
    opt.add_argument("--lr", type=float, default=_O.lr, help="AdamW learning rate")
    opt.add_argument("--weight-decay", type=float, default=_O.weight_decay, help="AdamW weight decay")
    opt.add_argument(
        "--loss", choices=["l2", "mse"], default=_O.loss, help="l2 = the paper's ‖y − ŷ‖; or mse"
    )
    opt.add_argument(
        "--batch-size", type=int, default=_O.batch_size, help="trajectories per process per step"
    )
    opt.add_argument(
        "--query-chunk-fraction",
        type=float,
        default=_O.query_chunk_fraction,
        help="train each step on this random fraction of the query chunks that have a linear part "
        "(1 = all; < 1 saves student compute and memory for a noisier gradient; causal only)",
    )
    opt.add_argument("--seed", type=int, default=_O.seed, help="trajectory k uses noise seed seed+k")
    opt.add_argument("--phi-seed", type=int, default=_O.phi_seed, help="seed of φ's initialisation")
    opt.add_argument(
        "--eval-seed", type=int, default=_O.eval_seed, help="first seed of held-out trajectories"
    )
    opt.add_argument(
        "--eval-seeds", type=int, default=_O.eval_seeds, help="held-out seeds per evaluation prompt"
    )

    conv = parser.add_argument_group("conversion")
    conv.add_argument("--blocks", type=int, nargs="+", help="explicit block indices (overrides --num-blocks)")
    conv.add_argument("--num-blocks", type=int, default=None, help="blocks to convert (default: all)")
    conv.add_argument(
        "--placement", choices=PLACEMENTS, default=_C.placement, help="which --num-blocks blocks"
    )
    conv.add_argument("--chunk-frames", type=int, default=_A.chunk_frames, help="Tc, latent frames per chunk")
    conv.add_argument(
        "--overlap-frames", type=int, default=_A.overlap_frames, help="To, overlap frames seen with softmax"
    )
    conv.add_argument("--non-causal", action="store_true", help="non-causal linear part (no recurrence)")
    conv.add_argument(
        "--phi-hidden-dim", type=int, default=_A.feature_map.hidden_dim, help="φ MLP hidden width per head"
    )
    conv.add_argument(
        "--phi-feature-dim", type=int, default=_A.feature_map.feature_dim, help="φ output width per head"
    )

    run = parser.add_argument_group("run folder and output")
    run.add_argument("--run-name", required=True, help="run folder name (same name resumes)")
    run.add_argument("--runs-dir", default="rehyat_runs", help="directory holding run folders")
    run.add_argument(
        "--checkpoint-every", type=int, default=_O.checkpoint_every, help="checkpoint every N steps"
    )
    run.add_argument("--keep-checkpoints", type=int, default=_O.keep_checkpoints, help="checkpoints kept")
    run.add_argument("--output", help="φ file to write (default: <run>/phi.safetensors)")
    run.add_argument(
        "--device", default=None, help="compute device (default: cuda:LOCAL_RANK if available, else cpu)"
    )
    run.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="teacher dtype (auto: bfloat16 on CUDA, float32 on CPU); φ always train in fp32",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Build the teacher, train (or resume), evaluate, write φ and the report."""

    from ..training.distill import DistillCancelled
    from ..training.distill_job import DistillInputs, DistillJob, conversion_for
    from ..training.distributed import init_distributed, teardown_distributed
    from ..training.job import TrainingHooks
    from ..training.report import format_report
    from ..training.runs import validate_run_name
    from ..training.wandit_teacher import WanDiTTeacher
    from ..video_latent import video_latent_shape

    validate_run_name(args.run_name, "--run-name")
    output = check_new_file(args.output, "--output") if args.output else None  # never over a file / input
    for name in ("width", "height"):
        value = getattr(args, name)
        if value < 16 or value % 16:
            raise ValueError(f"--{name} must be a positive multiple of 16; got {value}")
    if args.length < 1:
        raise ValueError(f"--length must be ≥ 1 video frame; got {args.length}")
    sampling = TeacherSampling(
        steps=args.steps, cfg=args.cfg, shift=args.shift, eta=args.eta, capture_stride=args.capture_stride
    )
    inputs = DistillInputs(
        conversion=conversion_for(
            num_blocks=args.num_blocks,
            placement=args.placement,
            blocks=tuple(args.blocks) if args.blocks else None,
            chunk_frames=args.chunk_frames,
            overlap_frames=args.overlap_frames,
            causal=not args.non_causal,
            phi_hidden_dim=args.phi_hidden_dim,
            phi_feature_dim=args.phi_feature_dim,
        ),
        options=DistillOptions(
            iterations=args.iterations,
            lr=args.lr,
            weight_decay=args.weight_decay,
            loss=args.loss,
            batch_size=args.batch_size,
            seed=args.seed,
            phi_seed=args.phi_seed,
            eval_seed=args.eval_seed,
            eval_seeds=args.eval_seeds,
            holdout_prompts=args.holdout_prompts,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            query_chunk_fraction=args.query_chunk_fraction,
        ),
        runs_dir=args.runs_dir,
        run_name=args.run_name,
        output=output,
    )

    ctx = init_distributed(args.device)
    try:
        dtype = _dtype(args.dtype, ctx.device)
        model = load_wan(args.model).to(device=ctx.device, dtype=dtype).eval().requires_grad_(False)
        prompts, negative = load_prompts(args, model.config.text_dim)
        latent = video_latent_shape(args.length, args.height, args.width, model.config.in_dim, exact=False)
        teacher = WanDiTTeacher(model, prompts, negative, latent, sampling)
        bar = _progress_bar(ctx.is_main and not args.no_progress, inputs.options.iterations)
        hooks = TrainingHooks(on_step=bar.update if bar is not None else None)
        job = DistillJob(inputs, teacher, len(prompts), ctx=ctx, device=ctx.device, hooks=hooks)
        run_path = job.open_run()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if ctx.world_size == 1 else None
        try:
            outputs = job.run()
        except (KeyboardInterrupt, DistillCancelled):
            if ctx.is_main:
                print(
                    f"\ninterrupted: run folder {run_path} holds the last checkpoint; "
                    "run the same command again to resume"
                )
            return 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
        if ctx.is_main:
            report = outputs.result.report
            print(
                json.dumps(report, indent=2)
                if args.json
                else format_report(report) + f"\nφ file: {outputs.phi_path}\nrun folder: {outputs.run_path}"
            )
        return 0
    finally:
        teardown_distributed()


def load_wan(path: str):
    """A :class:`rehyat.models.wan.WanDiT` from a .safetensors file or a diffusers folder of shards."""
    import safetensors.torch

    from ..models.wan import WanDiT

    p = Path(path)
    if p.is_dir():
        folder = p / "transformer" if (p / "transformer").is_dir() else p
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"--model folder {p} has no .safetensors files")
    elif p.is_file():
        files = [p]
    else:
        raise ValueError(f"--model {path!r} does not exist")
    state: dict = {}
    for file in files:
        state.update(safetensors.torch.load_file(str(file)))
    return WanDiT.from_state_dict(state)


def load_prompts(args: argparse.Namespace, text_dim: int):
    """Training prompts' text features ``[(L, text_dim)]`` and the negative one ``(L, text_dim)``."""
    from ..conditioning_io import load_conditioning

    prompts = [_first_cond(load_conditioning(f), f"--conditioning {f}") for f in args.conditioning]
    encoder = None
    if args.prompts:
        if not args.text_encoder:
            raise ValueError(
                "--prompts needs --text-encoder (a local umT5 encoder directory; the encoder needs "
                "transformers + sentencepiece: pip install 'comfyui-rehyat[text]')"
            )
        from ..training.text_encoding import encode_prompts, load_umt5

        lines = [
            line.strip()
            for line in Path(args.prompts).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        if not lines:
            raise ValueError(f"--prompts {args.prompts}: the prompt list is empty (one prompt per line)")
        encoder = load_umt5(args.text_encoder)
        prompts += encode_prompts(*encoder, lines)
    if not prompts:
        raise ValueError(
            "prompts: the prompt list is empty — give --conditioning files or --prompts with --text-encoder"
        )
    if args.negative_conditioning:
        negative = _first_cond(load_conditioning(args.negative_conditioning), "--negative-conditioning")
    elif encoder is not None or args.text_encoder:
        from ..training.text_encoding import encode_prompts, load_umt5

        encoder = encoder or load_umt5(args.text_encoder)
        negative = encode_prompts(*encoder, [args.negative_prompt])[0]
    elif args.cfg == 1.0:
        negative = prompts[0]  # unused without guidance
    else:
        raise ValueError(
            "--negative-conditioning (or --text-encoder for --negative-prompt) is required when --cfg ≠ 1"
        )
    for i, features in enumerate([*prompts, negative]):
        if features.shape[-1] != text_dim:
            raise ValueError(
                f"prompt {i}: text features have width {features.shape[-1]}; the model expects {text_dim}"
            )
    return prompts, negative


def _first_cond(conditioning, what: str):
    cond = conditioning[0][0]  # (B, L, C)
    if cond.ndim != 3 or cond.shape[0] != 1:
        raise ValueError(f"{what}: expected one prompt's conditioning (1, L, C); got {tuple(cond.shape)}")
    return cond[0].float()


def _dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    class _Bar:
        def update(self, step: int, total_steps: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            bar.refresh()

        def close(self) -> None:
            bar.close()

    return _Bar()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
