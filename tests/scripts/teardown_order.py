"""One rank of a 2-rank torchrun job: does teardown wait for every rank before leaving the group?

Usage: python teardown_order.py OUT_DIR. Rank 0 lingers after the last collective, then marks that it
reached teardown; rank 1 records whether that mark existed once its own teardown returned.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from rehyat.training.distributed import init_distributed, teardown_distributed  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1])
    ctx = init_distributed("cpu")
    try:
        dist.all_reduce(torch.ones(1))
        if ctx.rank == 0:
            time.sleep(1.0)  # e.g. rank 0 writing the output files
            (out / "rank0_at_teardown").touch()
    finally:
        teardown_distributed()
    if ctx.rank == 1:
        seen = (out / "rank0_at_teardown").exists()
        (out / ("rank1_waited" if seen else "rank1_left_early")).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
