"""Data-parallel helpers for training under ``torchrun`` (a no-op single process without it).

``torchrun --nproc_per_node N …`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; :func:`init_distributed` reads them and starts a process group — ``gloo`` on CPU,
``nccl`` on CUDA. Without those variables everything here works as one process of rank 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import require_int

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 … world_size-1).
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        device: the device this process computes on.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (single process, no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files and prints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is running (world size > 1 or launched by torchrun)."""
        return self.backend is not None

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            dist.barrier()


def env_context(device: str | torch.device | None = None) -> DistributedContext:
    """The context described by torchrun's environment variables, without starting anything.

    ``device``: None picks ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world}); got {rank}")
    if device is None:
        chosen = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device(f"cuda:{local}")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    backend = ("nccl" if chosen.type == "cuda" else "gloo") if launched else None
    return DistributedContext(rank=rank, world_size=world, local_rank=local, device=chosen, backend=backend)


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Start the process group described by torchrun's variables (idempotent) and return the context.

    Single process (no torchrun variables): returns rank 0 of 1 and starts nothing.
    """
    ctx = env_context(device)
    if ctx.backend is None:
        return ctx
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if not dist.is_initialized():
        dist.init_process_group(backend=ctx.backend, rank=ctx.rank, world_size=ctx.world_size)
    return ctx


def teardown_distributed() -> None:
    """Leave the process group cleanly if one is running (safe to call always).

    On a normal exit every rank first meets at a barrier, so no rank destroys its group (closing its
    gloo / nccl connections and, on rank 0, the rendezvous store) while a peer still uses them — a
    race that can abort the peer at exit ("terminate called without an active exception"). When an
    exception is propagating (called from a ``finally``), the barrier is skipped: the other ranks
    may never arrive.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if sys.exc_info()[0] is None:
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str | torch.device | None = None):
    """``with distributed_session() as ctx:`` — :func:`init_distributed` … :func:`teardown_distributed`."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        if ctx.distributed:
            teardown_distributed()


def all_reduce_mean_(tensors: Iterable[Tensor], ctx: DistributedContext | None = None) -> None:
    """Replace each tensor by its mean over all ranks, in place (no-op in a single process).

    The tensors are flattened into one buffer per dtype so each call is one collective.
    """
    tensors = [t for t in tensors if t is not None]
    if not _group_running(ctx) or not tensors:
        return
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for tensor in group:
            count = tensor.numel()
            tensor.copy_(flat[offset : offset + count].view_as(tensor))
            offset += count


def average_gradients_(
    parameters: Iterable[torch.nn.Parameter], ctx: DistributedContext | None = None
) -> None:
    """All-reduce-mean the ``.grad`` of ``parameters`` (those without a gradient get zeros first).

    Every rank must call it with the same parameters in the same order.
    """
    params = list(parameters)
    if not _group_running(ctx):
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    all_reduce_mean_([p.grad for p in params], ctx)


def all_gather_objects(value: Any, ctx: DistributedContext | None = None) -> list[Any]:
    """Every rank's ``value`` (JSON-like objects), in rank order; ``[value]`` in a single process."""
    if not _group_running(ctx):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, ctx: DistributedContext | None = None, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (``value`` itself in a single process)."""
    if not _group_running(ctx):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world``-th item starting at ``rank``.

    Raises:
        ValueError: unless ``0 ≤ rank < world``.
    """
    require_int("world", world, low=1)
    require_int("rank", rank, low=0, high=world - 1)
    return list(items[rank::world])


def on_main(ctx: DistributedContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``fn`` on rank 0 only (returns None elsewhere); then every rank waits for it."""
    result = fn(*args, **kwargs) if ctx.is_main else None
    ctx.barrier()
    return result


def _group_running(ctx: DistributedContext | None) -> bool:
    if ctx is not None and not ctx.distributed:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
