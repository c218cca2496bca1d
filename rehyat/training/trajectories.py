"""Which (prompt, seed) trajectories a distillation run trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass

from .options import DistillOptions


@dataclass(frozen=True)
class Trajectory:
    """One teacher sampling run: a prompt (conditioning index) and a noise seed."""

    index: int
    conditioning: int
    seed: int


@dataclass(frozen=True)
class TrajectoryPlan:
    """Training and held-out trajectories of a run.

    Training trajectory k uses prompt ``train_prompts[k mod P]`` and seed ``seed + k``; held-out
    ones use ``eval_prompts`` × seeds ``eval_seed + j`` (j < eval_seeds).
    """

    train_prompts: tuple[int, ...]
    eval_prompts: tuple[int, ...]
    seed: int
    eval_seed: int
    eval_seeds: int

    @classmethod
    def build(cls, num_prompts: int, options: DistillOptions) -> TrajectoryPlan:
        """Split ``num_prompts`` prompts into training and held-out ones (see DistillOptions)."""
        if num_prompts < 1:
            raise ValueError("prompts: the prompt list is empty — give at least one prompt (one per line)")
        holdout = options.holdout_prompts
        if holdout is None:
            holdout = 1 if num_prompts >= 2 else 0
        if holdout >= num_prompts:
            raise ValueError(
                f"holdout_prompts must be < the number of prompts ({num_prompts}) so some remain for "
                f"training; got {holdout}"
            )
        train = tuple(range(num_prompts - holdout))
        held = tuple(range(num_prompts - holdout, num_prompts)) or train
        return cls(train, held, options.seed, options.eval_seed, options.eval_seeds)

    def train(self, k: int) -> Trajectory:
        """Training trajectory ``k``."""
        return Trajectory(k, self.train_prompts[k % len(self.train_prompts)], self.seed + k)

    def group(self, index: int, size: int) -> list[Trajectory]:
        """Training trajectories ``[index·size, (index+1)·size)`` (one global batch)."""
        return [self.train(k) for k in range(index * size, (index + 1) * size)]

    def held_out(self) -> list[Trajectory]:
        """Evaluation trajectories: held-out prompts (all prompts when none is held out) × eval seeds."""
        return [
            Trajectory(-1 - i, prompt, self.eval_seed + j)
            for i, (prompt, j) in enumerate((p, j) for p in self.eval_prompts for j in range(self.eval_seeds))
        ]

    def check_seeds(self, trajectories_needed: int) -> None:
        """Refuse held-out seeds that a training trajectory also uses."""
        train = range(self.seed, self.seed + trajectories_needed)
        clash = [s for s in range(self.eval_seed, self.eval_seed + self.eval_seeds) if s in train]
        if clash:
            raise ValueError(
                f"eval_seed: held-out seeds {clash[:3]} are also training seeds "
                f"({self.seed}..{self.seed + trajectories_needed - 1}); choose eval_seed ≥ "
                f"{self.seed + trajectories_needed} or below {self.seed}"
            )
