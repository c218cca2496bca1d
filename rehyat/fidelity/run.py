"""``python -m rehyat fidelity``: distil, generate and score every case of the fidelity grid.

Every case is distilled with the same budget (steps, prompts, trajectories) on the embedded teacher;
clips are generated from held-out prompts and seeds — prompts the distillation never saw — with the
case's model and with the teacher, at the teacher's training length and at ``long_factor`` times it.
Each finished case is written to ``<run_dir>/cases/<name>.json`` (atomically), so an interrupted run
picks up at the first unfinished case; results for other settings are refused, not mixed.

Around the grid (each stored in the work folder with what it depends on): the calibration rows —
other-seed floor, all-black, static mean, weight-noise ceiling and the block-causal softmax oracle
(:mod:`.calibration`); the headline case from ``phi_seeds`` φ seeds (:mod:`.seeds`), whose spread
enters every paired interval; the per-block attention error on held-out trajectories
(:mod:`.attention_section`); and the shipped student's rows (:mod:`.shipped`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..atomic import atomic_save_file, atomic_write_bytes
from ..config import require_int, require_real
from ..metrics import temporal_flicker
from ..models.wan_rehyat import convert, load_phi, save_phi
from ..student import PHI_FILE
from ..student.train import HELD_OUT_SCENES
from ..teacher.analysis import attention_temporal_structure
from ..teacher.distillation import distil_on_teacher, generator_prompts
from ..teacher.evaluate import held_out_pairs
from ..teacher.model import ASSETS, SamplingConfig, Teacher, load_teacher
from . import clip_metrics
from .attention_section import attention_section
from .calibration import calibration_rows, range_shares
from .cases import FidelityCase, grid
from .cost import WAN_1_3B_81_FRAMES, AttentionShape, attention_share
from .finetune_stage import finetune_on_teacher
from .report import seed_spread
from .scoring import generate_clips, score_clips, summarise
from .seeds import phi_path, seed_runs
from .shipped import shipped_rows

SETTINGS_FILE = "settings.json"
SECTION_KNOBS = ("phi_seeds", "attention_trajectories", "ceiling_noise", "student_dir")
HEADLINE = "rehyat"  # the headline case: φ seeds, attention error, chunk PSNR and the oracle's Tc
TEACHER_CLIPS = "teacher_clips.safetensors"


@dataclass(frozen=True)
class FidelityConfig:
    """Options of ``python -m rehyat fidelity``.

    Attributes:
        grid: "full" (every comparison) or "reduced" (one case of each kind; the tests' grid).
        cases: only these case names of the grid (None: all); the reference is added when a
            fine-tuned case needs its φ.
        distill_steps, distill_prompts, distill_trajectory_steps: the distillation budget, the same
            for every case.
        clips: held-out (prompt, seed) pairs generated at the teacher's training length.
        long_clips: how many of them are also generated at ``long_factor`` × the training length.
        long_factor: the long clips' length over the training length.
        sampling_steps: Euler steps per clip (None: the teacher's 20).
        finetune_steps, finetune_samples, finetune_lr: the stage-2 fine-tune of the "finetune" case
            (every weight trains, flow matching on teacher-generated clips of the distillation prompts).
        eval_seed: first generator and noise seed of the held-out clips.
        phi_seeds: φ initialisation seeds of the headline case (seed 0 is the case itself; the others
            are distilled alike): their spread is the training noise in every interval.
        attention_trajectories: held-out teacher trajectories of the per-block attention error section
            (the distillation prompts exclude the scenes of the first ``max(48, this)`` of them).
        ceiling_noise: relative noise on every teacher weight of the noise-ceiling row.
        student_dir: the shipped student's files (default: the teacher's folder); rows are skipped,
            with a line in the report, when they are absent.
        output: where fidelity.md, fidelity.json and fidelity_scatter.png are written.
        run_dir: the resumable work folder (default ``<output>/.fidelity_run``).
        teacher_dir: the teacher's files (default: the package's).
    """

    grid: str = "full"
    cases: tuple[str, ...] | None = None
    distill_steps: int = 100
    distill_prompts: int = 8
    distill_trajectory_steps: int = 10
    clips: int = 8
    long_clips: int = 4
    long_factor: int = 4
    sampling_steps: int | None = None
    finetune_steps: int = 60
    finetune_samples: int = 16
    finetune_lr: float = 5e-5
    eval_seed: int = 50_000
    phi_seeds: int = 3
    attention_trajectories: int = 32
    ceiling_noise: float = 1e-3
    student_dir: str | None = None
    output: str = "docs"
    run_dir: str | None = None
    teacher_dir: str | None = None

    def __post_init__(self) -> None:
        grid(self.grid)  # validates the name
        require_int("distill_steps", self.distill_steps, low=1)
        require_int("distill_prompts", self.distill_prompts, low=2, high=1000)
        require_int("distill_trajectory_steps", self.distill_trajectory_steps, low=1, high=1000)
        require_int("clips", self.clips, low=1, high=1000)
        require_int("long_clips", self.long_clips, low=0, high=self.clips)
        require_int("long_factor", self.long_factor, low=1, high=64)
        if self.sampling_steps is not None:
            require_int("sampling_steps", self.sampling_steps, low=1, high=1000)
        require_int("finetune_steps", self.finetune_steps, low=1)
        require_int("finetune_samples", self.finetune_samples, low=1, high=10_000)
        require_real("finetune_lr", self.finetune_lr, low=1e-12, high=1.0)
        require_int("eval_seed", self.eval_seed, low=1000)
        require_int("phi_seeds", self.phi_seeds, low=1, high=100)
        require_int("attention_trajectories", self.attention_trajectories, low=1, high=10_000)
        require_real("ceiling_noise", self.ceiling_noise, low=1e-9, high=0.1)
        if self.cases is not None:
            object.__setattr__(self, "cases", tuple(self.cases))

    @property
    def work_dir(self) -> Path:
        """The resumable work folder."""
        return Path(self.run_dir) if self.run_dir else Path(self.output) / ".fidelity_run"

    def identity(self) -> dict[str, Any]:
        """The settings every stored result depends on (a resumed run must share them)."""
        data = asdict(self)
        for key in ("cases", "output", "run_dir", "grid", "teacher_dir"):  # the teacher: by fingerprint
            data.pop(key)
        for key in SECTION_KNOBS:  # their results are stored with their own definitions
            data.pop(key)
        return data

    def section_settings(self) -> dict[str, Any]:
        """The knobs of the calibration, φ-seed, attention-error and shipped-student sections."""
        return {key: getattr(self, key) for key in SECTION_KNOBS}


def selected_cases(config: FidelityConfig, num_blocks: int) -> list[FidelityCase]:
    """The cases to run, in order; the reference is always among them (every verdict pairs against it,
    and the fine-tuned case starts from its φ)."""
    cases = grid(config.grid, num_blocks)
    if config.cases is None:
        return cases
    names = {c.name for c in cases}
    unknown = sorted(set(config.cases) - names)
    if unknown:
        raise ValueError(
            f"cases: unknown case(s) {unknown} in the {config.grid} grid; choose from {sorted(names)}"
        )
    wanted = set(config.cases) | {"rehyat"}  # every comparison is paired against the reference
    return [c for c in cases if c.name in wanted]


def run_fidelity(config: FidelityConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the grid; returns the results also written to ``fidelity.json``."""
    from .report import write_report

    teacher = load_teacher(config.teacher_dir)
    num_blocks = teacher.config.dit.num_layers
    cases = selected_cases(config, num_blocks)  # validates the names before anything is written
    work = config.work_dir
    sampling = teacher.config.sampling
    if config.sampling_steps is not None:
        sampling = replace(sampling, steps=config.sampling_steps)
    train_frames = teacher.config.clip.frames
    long_frames = config.long_factor * train_frames
    # No distillation prompt shows a scene of the attention-error section's held-out trajectories.
    held_out = [prompt for prompt, _ in held_out_pairs(max(HELD_OUT_SCENES, config.attention_trajectories))]
    distill_prompts = generator_prompts(config.distill_prompts, exclude=held_out)
    eval_prompts = generator_prompts(config.clips, first_seed=config.eval_seed, exclude=distill_prompts)
    eval_set = [(p, config.eval_seed + i) for i, p in enumerate(eval_prompts)]
    # The prompts are part of what every stored result depends on (the generator could change).
    _check_settings(
        work,
        config,
        teacher,
        {"distill_prompts": distill_prompts, "eval_prompts": eval_prompts, "sampling": asdict(sampling)},
    )
    log(
        f"fidelity: {len(cases)} cases, {config.clips} held-out clips of {train_frames} frames "
        f"and {config.long_clips} of {long_frames}, work folder {work}"
    )

    teacher_clips = _teacher_clips(teacher, work, eval_set, train_frames, long_frames, config, sampling, log)
    results = {}
    for case in cases:
        results[case.name] = _run_case(
            case, teacher, teacher_clips, work, eval_set, config, sampling, distill_prompts, log
        )
    headline = next(c for c in cases if c.name == HEADLINE)
    tc = headline.attention.chunk_frames
    sections = _sections(
        teacher, teacher_clips, work, eval_set, headline, config, sampling, distill_prompts, long_frames, log
    )

    teacher_shape = AttentionShape(
        "teacher, long clips",
        num_blocks,
        teacher.config.dit.num_heads,
        teacher.config.dit.head_dim,
        long_frames,
        teacher.config.tokens_per_frame,
    )
    for case in cases:
        results[case.name]["attention_flops_share"] = {
            "teacher_long": attention_share(case, teacher_shape, num_blocks),
            "wan2.1_1.3b_81_frames": attention_share(case, WAN_1_3B_81_FRAMES, num_blocks),
        }
    structure = attention_temporal_structure(teacher, chunk_frames=3, overlap_frames=1, seeds=(11, 12))
    summary = {
        "command": "python -m rehyat fidelity",
        "settings": {**config.identity(), "grid": config.grid},
        "teacher": {
            "training": getattr(teacher, "training_info", {}),
            "config": teacher.config.to_dict(),
            "content": _teacher_content(teacher_clips, eval_set),
            "content_pooled": {
                kind: clip_metrics.pooled_content(
                    teacher_clips[kind], [p for p, _ in eval_set], teacher.config.clip, tc
                )
                for kind in ("short", "long")
            },
            "content_chunk_frames": tc,
            "attention_temporal_structure": {k: v for k, v in structure.items() if k != "blocks"},
        },
        "eval_set": [{"prompt": p, "seed": s} for p, s in eval_set],
        "distill_prompts": distill_prompts,
        "training_frames": train_frames,
        "long_frames": long_frames,
        "cost_shapes": {
            "teacher_long": asdict(teacher_shape),
            "wan2.1_1.3b_81_frames": asdict(WAN_1_3B_81_FRAMES),
        },
        "cases": results,
        "headline": HEADLINE,
        "section_settings": config.section_settings(),
        **sections,
        "threads": torch.get_num_threads(),
    }
    summary["range_shares"] = range_shares(summary)
    summary["phi_seeds"]["spread"] = {
        kind: {m: seed_spread(summary, m, kind) for m in ("psnr_db", "cosine")} for kind in ("short", "long")
    }
    paths = write_report(summary, Path(config.output))
    log("wrote " + ", ".join(str(p) for p in paths))
    return summary


# --- steps ---------------------------------------------------------------------------------------


def _sections(
    teacher, teacher_clips, work, eval_set, headline, config, sampling, distill_prompts, long_frames, log
) -> dict[str, Any]:
    """The calibration rows, the headline case's other φ seeds, the per-block attention error and the
    shipped student's rows."""
    tc = headline.attention.chunk_frames
    calibration = calibration_rows(
        teacher, teacher_clips, work, eval_set, long_frames=long_frames, chunk_frames=tc,
        ceiling_noise=config.ceiling_noise, sampling=sampling, log=log,
    )
    runs = seed_runs(
        teacher, teacher_clips, work, eval_set, headline, seeds=config.phi_seeds,
        steps=config.distill_steps, trajectory_steps=config.distill_trajectory_steps,
        long_frames=long_frames, prompts=distill_prompts, sampling=sampling, log=log,
    )
    folder = Path(config.student_dir or config.teacher_dir or ASSETS)
    seed_files = {s: phi_path(work, headline, s) for s in range(config.phi_seeds)}
    attention = attention_section(
        teacher, work, headline, {s: p for s, p in seed_files.items() if p.is_file()},
        shipped_phi=folder / PHI_FILE, trajectories=config.attention_trajectories,
        trajectory_steps=config.distill_trajectory_steps, sampling=sampling, log=log,
    )
    student = shipped_rows(
        teacher, teacher_clips, work, eval_set, folder=folder, long_frames=long_frames, sampling=sampling,
        log=log,
    )
    return {
        "calibration": calibration,
        "phi_seeds": {"case": headline.name, "seeds": list(range(config.phi_seeds)), "runs": runs},
        "attention_error": attention,
        "student": student,
    }


def _check_settings(work: Path, config: FidelityConfig, teacher: Teacher, derived: dict[str, Any]) -> None:
    identity = {**config.identity(), "teacher_fingerprint": _teacher_fingerprint(teacher), **derived}
    path = work / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != identity:
            differ = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            raise ValueError(
                f"run_dir {work} holds results made with other settings ({', '.join(differ)}): "
                "use another --run-dir, or delete that folder to start over"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(identity, indent=2) + "\n").encode())


def _teacher_fingerprint(teacher: Teacher) -> float:
    return float(sum(float(p.detach().double().sum()) for p in teacher.dit.parameters()))


def _generate(teacher: Teacher, velocity, eval_set, frames: int, sampling: SamplingConfig) -> list[Tensor]:
    return generate_clips(teacher, velocity, eval_set, frames, sampling)


def _teacher_clips(teacher, work, eval_set, train_frames, long_frames, config, sampling, log) -> dict:
    path = work / TEACHER_CLIPS
    if path.is_file():
        tensors = load_file(str(path))
        return {
            "short": [tensors[f"short.{i}"] for i in range(len(eval_set))],
            "long": [tensors[f"long.{i}"] for i in range(config.long_clips)],
        }
    log("generating the teacher's clips …")
    clips = {
        "short": _generate(teacher, None, eval_set, train_frames, sampling),
        "long": _generate(teacher, None, eval_set[: config.long_clips], long_frames, sampling),
    }
    tensors = {f"{kind}.{i}": c.contiguous() for kind, items in clips.items() for i, c in enumerate(items)}
    atomic_save_file(tensors, {}, path)
    return clips


def _run_case(case, teacher, teacher_clips, work, eval_set, config, sampling, distill_prompts, log) -> dict:
    path = work / "cases" / f"{case.name}.json"
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if _definition(stored.get("case", {})) == _definition(case.to_dict()):
            log(f"  {case.name}: done earlier ({path})")
            stored["case"] = case.to_dict()  # labels may have been reworded since
            return stored
        log(f"  {case.name}: the stored result is for another definition of this case: recomputing")
    started = time.perf_counter()
    student = copy.deepcopy(teacher)
    num_blocks = teacher.config.dit.num_layers
    reference_phi = work / "phi" / "rehyat.safetensors"
    record: dict[str, Any] = {"case": case.to_dict()}
    if case.finetune and reference_phi.is_file():
        load_phi(student.dit, reference_phi)
        record["distillation"] = {"source": "the reference case's φ (same distillation)"}
    elif case.distils:
        log(f"  {case.name}: distilling φ ({config.distill_steps} steps) …")
        hybrid, report = distil_on_teacher(
            teacher,
            case.conversion(num_blocks),
            steps=config.distill_steps,
            prompts=distill_prompts,
            sampling=sampling,
            trajectory_steps=config.distill_trajectory_steps,
        )
        convert(student.dit, case.conversion(num_blocks), hybrid)
        record["distillation"] = {
            "steps": report["steps"],
            "train_seconds": report["train_seconds"],
            "held_out_blocks": report["held_out"]["blocks"],
        }
    else:
        convert(student.dit, case.conversion(num_blocks))
        record["distillation"] = None
    distilled_at = time.perf_counter()
    if case.finetune:
        log(f"  {case.name}: fine-tuning ({config.finetune_steps} steps) …")
        record["finetune"] = finetune_on_teacher(
            teacher, student, work / "finetune_data", distill_prompts, config, sampling
        )
    if case.distils and not case.finetune:
        (work / "phi").mkdir(parents=True, exist_ok=True)
        save_phi(student.dit, work / "phi" / f"{case.name}.safetensors", training={"stage": "distill"})
    trained_at = time.perf_counter()
    log(f"  {case.name}: generating {len(eval_set)} + {config.long_clips} clips …")
    student.dit.eval()
    train_frames = teacher.config.clip.frames
    short = _generate(teacher, student.dit, eval_set, train_frames, sampling)
    long = _generate(
        teacher, student.dit, eval_set[: config.long_clips], config.long_factor * train_frames, sampling
    )
    tc = case.attention.chunk_frames
    record.update(score_clips(teacher_clips, short, long, eval_set, tc, teacher.config.clip))
    record["seconds"] = {
        "distill": distilled_at - started,
        "finetune": trained_at - distilled_at,
        "generate": time.perf_counter() - trained_at,
    }
    record["summary"] = summarise(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    s = record["summary"]
    log(
        f"  {case.name}: PSNR {_fmt(_mean_of(s, 'short'))} dB at {train_frames} frames, "
        f"{_fmt(_mean_of(s, 'long'))} dB at {config.long_factor * train_frames}"
    )
    return record


def _definition(case: dict[str, Any]) -> dict[str, Any]:
    """What a case's stored result depends on (everything but its display label)."""
    return {k: v for k, v in case.items() if k != "label"}


def _teacher_content(teacher_clips: dict, eval_set) -> dict[str, Any]:
    rows = [
        clip_metrics.content(c, prompt)
        for c, (prompt, _) in zip(teacher_clips["long"], eval_set, strict=False)
    ]
    flicker = [temporal_flicker(clip_metrics.to_unit_frames(c)) for c in teacher_clips["long"]]
    summary = {
        k: clip_metrics.mean_and_sem([r[k] for r in rows])
        for k in ("shapes_found", "spurious", "motion_plausible")
    }
    summary["temporal_flicker"] = clip_metrics.mean_and_sem(flicker)
    return summary


def _mean_of(summary: dict[str, Any], kind: str, metric: str = "psnr_db") -> float | None:
    return summary.get(kind, {}).get(metric, {}).get("mean")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
