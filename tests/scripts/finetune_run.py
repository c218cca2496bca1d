"""Fine-tune the tiny test DiT (tests/finetune_support.py) in a real process — one rank of a torchrun job.

Usage: python finetune_run.py DATASET OUT.safetensors [--run-root R --run-name N] [--steps S]
       [--batch B] [--micro M] [--trainable T] [--step-delay SECONDS]

Writes the trained parameters (rank 0) to OUT; with --run-root it checkpoints every step and resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from finetune_support import model_fn, tiny_dit, tiny_finetune_config, trained_tensors  # noqa: E402

from rehyat.training.dataset import LatentDataset  # noqa: E402
from rehyat.training.distributed import init_distributed, teardown_distributed  # noqa: E402
from rehyat.training.finetune import finetune  # noqa: E402
from rehyat.training.runs import RunFolder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("--run-root")
    parser.add_argument("--run-name", default="run")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--micro", type=int, default=1)
    parser.add_argument("--trainable", default="lora")
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        model = tiny_dit(0)
        config = tiny_finetune_config(args.steps, args.batch, args.micro, args.trainable)
        run = None
        if args.run_root:
            if ctx.is_main:
                RunFolder(args.run_root, args.run_name, {"test": config.identity()})
            ctx.barrier()
            run = RunFolder(args.run_root, args.run_name, {"test": config.identity()}, create=False)
        delay = (lambda: time.sleep(args.step_delay) or False) if args.step_delay else None
        result = finetune(
            model,
            model_fn(model),
            LatentDataset.open(args.dataset),
            config,
            run=run,
            ctx=ctx,
            should_stop=delay,
        )
        if ctx.is_main:
            save_file(trained_tensors(result), args.out)
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
