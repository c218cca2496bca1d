"""Run under ``torchrun --nproc_per_node 2``: exercises rehyat.training.distributed's collectives (gloo)
and writes what each rank saw to ``<out_dir>/rank<r>.json`` (argv[1]) — a file per rank, because two
ranks printing to one inherited stdout pipe can interleave their lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from rehyat.training.distributed import (  # noqa: E402
    all_gather_objects,
    all_reduce_mean_,
    average_gradients_,
    broadcast_object,
    distributed_session,
    on_main,
    shard,
)

with distributed_session("cpu") as ctx:
    values = [torch.tensor([float(ctx.rank), 10.0]), torch.tensor([2.0 * ctx.rank], dtype=torch.float64)]
    all_reduce_mean_(values, ctx)
    with_grad, without = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    with_grad.grad = torch.full((2,), float(ctx.rank + 1))
    average_gradients_([with_grad, without], ctx)
    gathered = all_gather_objects({"rank": ctx.rank}, ctx)
    shared = broadcast_object(f"from rank {ctx.rank}", ctx)
    ran = on_main(ctx, lambda: "main ran")
    Path(sys.argv[1], f"rank{ctx.rank}.json").write_text(
        json.dumps(
            {
                "rank": ctx.rank,
                "world": ctx.world_size,
                "backend": ctx.backend,
                "mean": values[0].tolist() + values[1].tolist(),
                "grad": with_grad.grad.tolist(),
                "zero_grad": without.grad.tolist(),
                "gathered": gathered,
                "broadcast": shared,
                "on_main": ran,
                "shard": shard(list(range(5)), ctx.rank, ctx.world_size),
            }
        )
    )
