"""Subprocess entry of :func:`rehyat.profiling.measure.measure_in_subprocess` (one case per process).

``python -m rehyat.profiling.child '<MeasureSpec JSON>'`` builds the case's WanDiT runner, measures
it and prints the :class:`~rehyat.profiling.measure.Measurement` as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys

import torch

from .cases import case_from_dict
from .measure import MeasureSpec, measure_runner
from .presets import LatentGrid, WanShape
from .runners import wandit_runner


def main(argv: list[str]) -> int:
    """Measure the spec in ``argv[0]``; print the result as JSON."""
    spec = MeasureSpec(**json.loads(argv[0]))
    if spec.threads:
        torch.set_num_threads(spec.threads)
    shape_data = dict(spec.shape)
    shape_data["patch"] = tuple(shape_data["patch"])
    runner = wandit_runner(WanShape(**shape_data), case_from_dict(spec.case), LatentGrid(*spec.latent),
                           layers=spec.layers, device=spec.device, dtype=getattr(torch, spec.dtype),
                           seed=spec.seed)
    result = measure_runner(runner, device=spec.device, repeats=spec.repeats, warmup=spec.warmup)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
