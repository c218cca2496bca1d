"""Stage-2 fine-tuning with Wan2.1's flow-matching objective: the training loop.

Works on any ``nn.Module`` velocity model through a ``model_fn(x_t, t, context) -> v`` (ComfyUI's
WanModel with the ReHyAt patch, diffusers' ``WanTransformer3DModel``, :class:`rehyat.models.wan.WanDiT`)
and any trainable set (:mod:`rehyat.training.trainable`) — "everything" also trains a small model
from scratch.

Determinism (what makes DDP and resume exact): global batch ``s`` holds the positions
``[s·B, (s+1)·B)``; position ``g`` reads sample ``perm_e[g mod N]`` (one seeded permutation per
epoch ``e``) with noise and σ from a generator seeded by (seed, g). Rank ``r`` of ``W`` takes
positions ``r, r+W, …`` in micro-batches; each position's loss is weighted 1/B and the gradients
are averaged over ranks, so any (world size, micro-batch) split computes the same update (up to
float summation order). A resumed run reloads the trained tensors, AdamW state and step from the
run folder's last checkpoint and continues with bit-identical data and noise.

Mixed precision: bf16 autocast on CUDA with fp32 trainable weights; plain fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import require_int, require_real
from .dataset import LatentDataset
from .distributed import DistributedContext, all_reduce_mean_, average_gradients_
from .flow_matching import FlowMatchingConfig, ModelFn, flow_matching_loss, sample_sigmas, shift_sigma
from .runs import RunFolder
from .trainable import TRAINABLE_SETS, Trainable, TrainableSet, select_trainable

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
_CKPT_ATTR = "_rehyat_checkpointed_forward"


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tune. Defaults: the paper's stage 2 (AdamW lr 1e-5, batch 16, 1,000 steps).

    Attributes:
        trainable: "phi", "phi+self_attn", "everything" (the paper) or "lora" (LoRA + φ).
        lora_rank: r of every LoRA adapter (trainable "lora").
        lora_alpha: LoRA scale numerator (None: = rank).
        steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: global batch (samples per optimizer step, over all processes).
        micro_batch: samples per forward/backward; batch_size / (micro_batch·world) micro-batches
            are accumulated per step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up from 0.
        max_grad_norm: clip the global gradient norm to this (0: no clipping).
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        gradient_checkpointing: recompute each transformer block in the backward pass.
        checkpoint_every: save a resumable checkpoint every N steps (and at the end / on cancel).
        seed: seed of the data order, noise, σ and LoRA initialisation.
        flow: timestep sampling of the flow-matching loss.
    """

    trainable: TrainableSet = "lora"
    lora_rank: int = 16
    lora_alpha: float | None = None
    steps: int = 1000
    batch_size: int = 16
    micro_batch: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    seed: int = 0
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_SETS:
            raise ValueError(f"trainable must be one of {TRAINABLE_SETS}; got {self.trainable!r}")
        require_int("lora_rank", self.lora_rank, low=1, high=4096)
        if self.lora_alpha is not None:
            require_real("lora_alpha", self.lora_alpha, low=1e-6, high=1e6)
        require_int("steps", self.steps, low=1)
        require_int("batch_size", self.batch_size, low=1)
        require_int("micro_batch", self.micro_batch, low=1)
        require_real("learning_rate", self.learning_rate, low=1e-12, high=1.0)
        require_real("weight_decay", self.weight_decay, low=0.0, high=10.0)
        object.__setattr__(self, "betas", tuple(self.betas))
        for i, beta in enumerate(self.betas):
            require_real(f"betas[{i}]", beta, low=0.0, high=0.999999)
        require_int("warmup_steps", self.warmup_steps, low=0)
        require_real("max_grad_norm", self.max_grad_norm, low=0.0, high=1e6)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be a bool; got {self.gradient_checkpointing!r}")
        require_int("checkpoint_every", self.checkpoint_every, low=1)
        require_int("seed", self.seed, low=0, high=2**63 - 1)
        if isinstance(self.flow, dict):
            object.__setattr__(self, "flow", FlowMatchingConfig(**self.flow))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share (everything but steps and checkpoint_every)."""
        data = self.to_dict()
        data.pop("steps")
        data.pop("checkpoint_every")
        return data


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        step: optimizer steps completed (== config.steps unless cancelled).
        losses: mean loss of every completed step (including steps before a resume).
        cancelled: the run stopped early on request (its state is checkpointed).
        resumed_from: the step the run resumed at (None for a fresh run).
        trainable: the trained parameters.
        seconds: wall time of this call.
    """

    step: int
    losses: list[float]
    cancelled: bool
    resumed_from: int | None
    trainable: Trainable
    seconds: float


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute every block of ``model.blocks`` in the backward pass (or stop doing so).

    Uses the model's own switch when it has one (:class:`~rehyat.models.wan.WanDiT`, diffusers'
    ``enable_gradient_checkpointing``); otherwise (ComfyUI's WanModel) each block's forward is
    wrapped in non-reentrant :func:`torch.utils.checkpoint.checkpoint`, which replays the block
    with the same arguments — the ReHyAt run (frame grid) travels in them, so recomputation sees it.
    """
    own = getattr(model, "enable_gradient_checkpointing", None)
    if callable(own):
        if "enabled" in own.__code__.co_varnames:
            own(enabled)
        elif enabled:
            own()
        else:
            model.disable_gradient_checkpointing()
        return
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"gradient_checkpointing needs a model with a .blocks ModuleList; {type(model).__name__} has none"
        )
    for block in blocks:
        if enabled and _CKPT_ATTR not in block.__dict__:
            block.forward = functools.partial(_checkpointed_call, type(block).forward.__get__(block))
            setattr(block, _CKPT_ATTR, True)
        elif not enabled and _CKPT_ATTR in block.__dict__:
            del block.forward
            delattr(block, _CKPT_ATTR)


def _checkpointed_call(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The CPU generator of global batch position ``position`` (noise and σ of that sample)."""
    mixed = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def sample_index(seed: int, position: int, dataset_size: int) -> int:
    """Which dataset sample global position ``position`` reads (a fresh permutation per epoch)."""
    epoch, offset = divmod(position, dataset_size)
    perm = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return int(perm[offset])


def learning_rate_at(config: FinetuneConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate


def autocast_context(device: torch.device, precision: Precision):
    """bf16 autocast on CUDA for "auto"/"bf16"; nothing on CPU for "auto"; CPU bf16 autocast for "bf16"."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def select_for_config(model: nn.Module, config: FinetuneConfig) -> Trainable:
    """:func:`select_trainable` with the config's set; LoRA initialisation depends on ``config.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return select_trainable(
            model, config.trainable, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha
        )


def finetune(
    model: nn.Module,
    model_fn: ModelFn,
    dataset: LatentDataset,
    config: FinetuneConfig,
    *,
    run: RunFolder | None = None,
    ctx: DistributedContext | None = None,
    trainable: Trainable | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    target_fn: ModelFn | None = None,
    weight_fn: Callable[[Tensor], Tensor] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``dataset`` with the flow-matching loss (see the module doc).

    Args:
        model: the module holding every parameter (φ inside its tree); set to train mode.
        model_fn: ``model_fn(x_t, t, context) -> v`` running ``model`` (with its patches).
        dataset: the samples (their latents must fit ``model_fn``).
        config: the settings.
        run: run folder for checkpoints (resumes from its last one); None: no checkpoints.
        ctx: distributed context (None: one process).
        trainable: an already selected set (default: :func:`select_trainable` with the config's).
        progress: ``progress(step, total, loss)`` after each step (main process only).
        should_stop: polled after each step; True → checkpoint and return ``cancelled=True``.
        target_fn: a teacher velocity ``(x_t, t, context) -> v`` to regress on instead of
            noise − x0 (see :func:`~rehyat.training.flow_matching.flow_matching_loss`).
        weight_fn: per-element loss weights of a batch of clean latents ``x0 -> w`` (broadcastable).

    Returns:
        A :class:`FinetuneResult`; the model keeps the trained weights.
    """
    started = time.perf_counter()
    world = ctx.world_size if ctx is not None else 1
    rank = ctx.rank if ctx is not None else 0
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.folder} has no samples")
    if config.batch_size % (world * config.micro_batch):
        raise ValueError(
            f"batch_size ({config.batch_size}) must be a multiple of micro_batch × processes "
            f"({config.micro_batch} × {world})"
        )
    device = next(model.parameters()).device
    if trainable is None:
        trainable = select_for_config(model, config)
    _trainable_to_fp32(trainable)
    params = list(trainable.parameters.values())
    if ctx is not None and ctx.distributed:
        _broadcast_parameters(params)
    set_gradient_checkpointing(model, config.gradient_checkpointing)
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay
    )
    losses: list[float] = []
    start, resumed_from = 0, None
    if run is not None:
        saved = run.load_latest()
        if saved is not None:
            _restore(saved, trainable, optimizer)
            start = resumed_from = saved.step
            losses = [float(x) for x in saved.extra.get("losses", [])][:start]

    model.train()
    per_rank = config.batch_size // world
    cancelled = False
    done = start
    try:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, step)
            positions = list(range(step * config.batch_size, (step + 1) * config.batch_size))[rank::world]
            step_loss = torch.zeros((), dtype=torch.float64)
            for first in range(0, per_rank, config.micro_batch):
                micro = positions[first : first + config.micro_batch]
                loss_sum = _micro_batch_loss(
                    model_fn, dataset, config, micro, device, target_fn=target_fn, weight_fn=weight_fn
                )
                (loss_sum / per_rank).backward()
                step_loss += loss_sum.detach().double().cpu()
            average_gradients_(params, ctx)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mean_loss = step_loss / per_rank
            all_reduce_mean_([mean_loss], ctx)
            losses.append(float(mean_loss))
            if progress is not None and rank == 0:
                progress(step + 1, config.steps, losses[-1])
            done = step + 1
            stop = should_stop is not None and should_stop()
            if run is not None and (done % config.checkpoint_every == 0 or done == config.steps or stop):
                _save(run, done, trainable, optimizer, losses, ctx)
            if stop:
                cancelled = True
                break
    finally:
        set_gradient_checkpointing(model, False)
        model.eval()
    return FinetuneResult(
        step=done,
        losses=losses,
        cancelled=cancelled,
        resumed_from=resumed_from,
        trainable=trainable,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def evaluation_loss(
    model_fn: ModelFn,
    dataset: LatentDataset,
    *,
    flow: FlowMatchingConfig | None = None,
    levels: int = 4,
    micro_batch: int = 4,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: Precision = "auto",
) -> float:
    """Mean flow-matching loss of every sample at ``levels`` fixed noise levels with fixed noise.

    The σ grid is the shifted midpoints ``shift((k + ½) / levels)``, and the noise of (sample,
    level) comes from a seeded generator, so the number is comparable before and after training
    (a held-out-noise measure; the training loss of single steps is much noisier).
    """
    require_int("levels", levels, low=1)
    require_int("micro_batch", micro_batch, low=1)
    flow = flow or FlowMatchingConfig()
    device = torch.device(device)
    grid = shift_sigma(torch.arange(levels, dtype=torch.float32).add(0.5).div(levels), flow.shift)
    jobs = [(i, k) for i in range(len(dataset)) for k in range(levels)]
    total = 0.0
    for first in range(0, len(jobs), micro_batch):
        part = jobs[first : first + micro_batch]
        x0, context = dataset.batch([i for i, _ in part], device=device)
        noise = torch.stack(
            [
                torch.randn(x0.shape[1:], generator=sample_generator(seed + 7919, i * levels + k))
                for i, k in part
            ]
        ).to(device)
        sigma = torch.stack([grid[k] for _, k in part])
        with autocast_context(device, precision):
            losses = flow_matching_loss(model_fn, x0, context, noise=noise, sigma=sigma, reduction="none")
        total += float(losses.float().sum())
    return total / len(jobs)


def _micro_batch_loss(
    model_fn: ModelFn,
    dataset: LatentDataset,
    config: FinetuneConfig,
    positions: list[int],
    device: torch.device,
    *,
    target_fn: ModelFn | None = None,
    weight_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Sum of the per-sample losses of ``positions`` (each with its own seeded noise and σ)."""
    n = len(dataset)
    indices = [sample_index(config.seed, g, n) for g in positions]
    x0, context = dataset.batch(indices, device=device)
    noises, sigmas = [], []
    for g in positions:
        gen = sample_generator(config.seed, g)
        sigmas.append(sample_sigmas(1, generator=gen, config=config.flow))
        noises.append(torch.randn(x0.shape[1:], generator=gen, dtype=torch.float32))
    noise = torch.stack(noises).to(device)
    sigma = torch.cat(sigmas)
    weight = None if weight_fn is None else weight_fn(x0)
    with autocast_context(device, config.precision):
        per_sample = flow_matching_loss(
            model_fn, x0, context, noise=noise, sigma=sigma, reduction="none",
            weight=weight, target_fn=target_fn,
        )
    return per_sample.float().sum()


def _trainable_to_fp32(trainable: Trainable) -> None:
    """Trainable weights are fp32 masters (the frozen rest keeps its dtype)."""
    for param in trainable.parameters.values():
        if param.dtype != torch.float32:
            param.data = param.data.float()


def _broadcast_parameters(params: list[nn.Parameter]) -> None:
    """Start every rank from rank 0's trainable weights (e.g. randomly initialised LoRA)."""
    import torch.distributed as dist

    for param in params:
        dist.broadcast(param.data, src=0)


def _save(
    run: RunFolder,
    step: int,
    trainable: Trainable,
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    ctx: DistributedContext | None,
) -> None:
    if ctx is None or ctx.is_main:
        tensors = {name: p.detach() for name, p in trainable.parameters.items()}
        run.save_checkpoint(step, tensors, {"adamw": optimizer.state_dict()}, {"losses": losses})
    if ctx is not None:
        ctx.barrier()


def _restore(saved: Any, trainable: Trainable, optimizer: torch.optim.Optimizer) -> None:
    names = set(trainable.parameters)
    if set(saved.tensors) != names:
        missing, extra = sorted(names - set(saved.tensors)), sorted(set(saved.tensors) - names)
        raise ValueError(
            f"checkpoint {saved.path} does not match the trainable set (missing {missing[:5]}, "
            f"unexpected {extra[:5]}): use a new run name"
        )
    with torch.no_grad():
        for name, param in trainable.parameters.items():
            param.copy_(saved.tensors[name].to(param.device, param.dtype))
    optimizer.load_state_dict(saved.optimizer_state["adamw"])
