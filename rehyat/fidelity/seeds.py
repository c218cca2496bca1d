"""Training noise of the headline case: the same distillation from other φ initialisation seeds.

Seed 0 is the grid's headline case itself (``cases["rehyat"]``); seeds 1 … ``phi_seeds − 1`` are
distilled with the same budget and prompts, generate the same held-out clips and are scored alike.
The seed-to-seed spread of a case's mean over the same clips is the training noise
(:func:`rehyat.fidelity.report.seed_spread`), which the report adds to every paired interval that
involves a trained case before calling a difference significant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from ..models.wan_rehyat import convert, load_phi, save_phi
from ..teacher.distillation import distil_on_teacher
from ..teacher.model import SamplingConfig, Teacher
from .cases import FidelityCase
from .scoring import cached, generate_clips, score_clips, store


def seed_name(case: FidelityCase, seed: int) -> str:
    """The row name of ``case`` distilled from φ seed ``seed`` (seed 0 is the case itself)."""
    return case.name if seed == 0 else f"{case.name}_seed{seed}"


def phi_path(work: Path, case: FidelityCase, seed: int) -> Path:
    """Where the φ of ``case`` from ``seed`` is kept in the work folder."""
    return work / "phi" / f"{seed_name(case, seed)}.safetensors"


def seed_runs(
    teacher: Teacher,
    teacher_clips: dict[str, list[Tensor]],
    work: Path,
    eval_set: list[tuple[str, int]],
    case: FidelityCase,
    *,
    seeds: int,
    steps: int,
    trajectory_steps: int,
    long_frames: int,
    prompts: list[str],
    sampling: SamplingConfig,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Rows of ``case`` distilled from φ seeds 1 … ``seeds − 1`` (cached in ``work/seeds``)."""
    if not case.distils or case.finetune:
        raise ValueError(f"φ seeds need a distilled case without fine-tune; got {case.name!r}")
    runs: dict[str, dict[str, Any]] = {}
    num_blocks = teacher.config.dit.num_layers
    long_set = eval_set[: len(teacher_clips["long"])]
    for seed in range(1, seeds):
        name = seed_name(case, seed)
        definition = {"case": {k: v for k, v in case.to_dict().items() if k != "label"}, "phi_seed": seed}
        path, phi = work / "seeds" / f"{name}.json", phi_path(work, case, seed)
        record = cached(path, definition) if phi.is_file() else None
        if record is None:
            log(f"  {name}: distilling φ from seed {seed} ({steps} steps) …")
            hybrid, report = distil_on_teacher(
                teacher,
                case.conversion(num_blocks),
                steps=steps,
                prompts=prompts,
                sampling=sampling,
                trajectory_steps=trajectory_steps,
                phi_seed=seed,
            )
            student = copy.deepcopy(teacher)
            convert(student.dit, case.conversion(num_blocks), hybrid)
            phi.parent.mkdir(parents=True, exist_ok=True)
            save_phi(student.dit, phi, training={"stage": "distill", "phi_seed": seed})
            student.dit.eval()
            log(f"  {name}: generating {len(eval_set)} + {len(long_set)} clips …")
            short = generate_clips(teacher, student.dit, eval_set, teacher.config.clip.frames, sampling)
            long = generate_clips(teacher, student.dit, long_set, long_frames, sampling)
            record = score_clips(
                teacher_clips, short, long, eval_set, case.attention.chunk_frames, teacher.config.clip
            )
            record["distillation"] = {
                "steps": report["steps"],
                "train_seconds": report["train_seconds"],
                "held_out_blocks": report["held_out"]["blocks"],
            }
            record = store(path, definition, record)
        record["case"] = {
            "name": name,
            "group": "phi_seed",
            "label": f"{case.label}, φ seed {seed}",
            "phi_seed": seed,
        }
        runs[name] = record
    return runs


def load_case_phi(teacher: Teacher, case: FidelityCase, path: Path) -> Teacher:
    """A copy of ``teacher`` converted with the φ file at ``path`` (made for ``case``)."""
    student = copy.deepcopy(teacher)
    load_phi(student.dit, path)
    return student.eval()
