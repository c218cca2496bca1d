"""Stage-1 curve of the embedded teacher's student: per-block attention error vs distillation budget.

For every budget (distillation steps) and φ seed, φ of all 4 blocks are distilled with the shipped
recipe's other settings (:class:`rehyat.student.StudentRecipe`); each φ set is then scored on
held-out teacher trajectories (:func:`rehyat.student.attention_error.attention_errors`), beside
the untrained φ, the windowed softmax (no linear part) and the exact block-causal softmax oracle.
Trained φ are kept in ``--work`` (a rerun reuses them), the JSON goes to stdout and ``--out``.

    python benchmarks/stage1_curve.py --budgets 50 100 200 400 800 1600 --seeds 0 1 2 \
        --out docs/stage1_curve.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import torch

    from rehyat.atomic import atomic_write_bytes
    from rehyat.models.wan_rehyat import convert, converted_blocks, load_phi, save_phi
    from rehyat.student import StudentRecipe
    from rehyat.student.attention_error import attention_errors
    from rehyat.student.train import run_stage1
    from rehyat.teacher.model import load_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trajectories", type=int, default=32, help="held-out trajectories scored")
    parser.add_argument("--work", default="rehyat_runs/stage1_curve", help="folder of the trained φ")
    parser.add_argument("--teacher-dir", default=None, help="teacher files (default: the shipped ones)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher_dir)
    base = StudentRecipe()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for budget in args.budgets:
        cases, seconds = {}, {}
        for seed in args.seeds:
            recipe = replace(base, stage1_steps=budget, phi_seed=seed)
            path = work / f"phi_{budget}_seed{seed}.safetensors"
            started = time.perf_counter()
            if path.is_file():
                model = copy.deepcopy(teacher)
                load_phi(model.dit, path)
            else:
                print(f"distilling {budget} steps, φ seed {seed}", file=sys.stderr, flush=True)
                model, _ = run_stage1(teacher, recipe)
                save_phi(model.dit, path, training={"stage": "distill", "steps": budget, "phi_seed": seed})
                seconds[str(seed)] = round(time.perf_counter() - started, 1)
            cases[f"seed {seed}"] = converted_blocks(model.dit)
        if budget == args.budgets[0]:
            untrained = copy.deepcopy(teacher)
            torch.manual_seed(0)
            convert(untrained.dit, base.conversion)
            cases["untrained φ"] = converted_blocks(untrained.dit)
        print(f"scoring budget {budget} on {args.trajectories} trajectories", file=sys.stderr, flush=True)
        errors = attention_errors(
            teacher, cases, chunk_frames=base.chunk_frames, overlap_frames=base.overlap_frames,
            trajectories=args.trajectories, trajectory_steps=base.stage1_trajectory_steps,
        )
        rows.append({"budget": budget, "distill_seconds": seconds, **errors})
    report = {
        "benchmark": "stage1_curve",
        "recipe": base.to_dict(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
