"""Training of ReHyAt φ: run folders, data-parallel helpers, plots and stage-1 distillation.

Heavy pieces (the distillation loop, model adapters) are imported from their own modules; this
package's import only pulls in what every trainer needs.
"""

from __future__ import annotations

from .distributed import (
    DistributedContext,
    all_reduce_mean_,
    average_gradients_,
    init_distributed,
    shard,
    teardown_distributed,
)
from .plots import loss_curve_image, loss_curve_png
from .runs import Checkpoint, RunFolder, validate_run_name

__all__ = [
    "Checkpoint",
    "DistributedContext",
    "RunFolder",
    "all_reduce_mean_",
    "average_gradients_",
    "init_distributed",
    "loss_curve_image",
    "loss_curve_png",
    "shard",
    "teardown_distributed",
    "validate_run_name",
]
