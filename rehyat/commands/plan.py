"""``python -m rehyat plan`` — will my clip fit? Peak GPU memory of softmax, context windows and ReHyAt.

For a model, weight format, video size, length, steps and cfg: the peak memory of the stock sampler
(softmax), ComfyUI's context windows (81-frame windows, overlap 16) and ReHyAt (streaming with its
state store on the GPU, on the CPU or ``auto``; sweep), which one to use, and the disk size of a
saved clip state. The figures come from the code's own accounting (:mod:`rehyat.planning`), checked
against CPU measurements; nothing is run. Example:

    python -m rehyat plan --gpu-memory 12 --model wan2.1-1.3b --weights fp8 --size 832x480 \\
        --frames 481 --steps 30 --cfg 5
"""

from __future__ import annotations

import argparse
import json
import re

NAME = "plan"
HELP = "will my clip fit? peak GPU memory of softmax / context windows / ReHyAt, and the choice"
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plan`` options."""
    from ..planning.models import PLAN_MODELS
    from ..planning.weights import WEIGHT_FORMATS

    parser.add_argument("--gpu-memory", type=float, required=True, metavar="GiB", help="GPU memory in GiB")
    parser.add_argument("--model", required=True, choices=sorted(PLAN_MODELS), help="the model")
    parser.add_argument("--weights", required=True, choices=WEIGHT_FORMATS, help="weight storage format")
    parser.add_argument("--size", required=True, metavar="WxH",
                        help="video width x height in pixels, e.g. 832x480")
    parser.add_argument("--frames", type=int, required=True, help="video frames (1 + 4k, e.g. 81, 481)")
    parser.add_argument("--steps", type=int, required=True, help="sampling steps")
    parser.add_argument("--cfg", type=float, required=True, help="CFG scale (1 = no uncond pass)")
    parser.add_argument("--sampler", default="euler", help="ComfyUI sampler name (evaluations per step)")
    parser.add_argument("--json", action="store_true", help="print the JSON plan instead of the table")


def parse_size(text: str) -> tuple[int, int]:
    """``"832x480"`` → ``(832, 480)`` (width, height); ValueError naming ``--size`` otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"--size must be WIDTHxHEIGHT in pixels, e.g. 832x480; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def run(args: argparse.Namespace) -> int:
    """Plan and print; bad options raise ValueError (reported by the CLI)."""
    from ..planning import PlanRequest, format_plan, get_plan_model, plan

    width, height = parse_size(args.size)
    request = PlanRequest(get_plan_model(args.model), args.gpu_memory, args.weights, width, height,
                          args.frames, args.steps, args.cfg, sampler=args.sampler)
    result = plan(request)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0
