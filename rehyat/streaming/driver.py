"""Chunked sampling drivers: the streaming (chunk-major) and sweep (step-major) orders.

Both wrap a k-diffusion-style sampler function ``fn(model, x, sigmas, extra_args, callback,
disable, **options)`` (ComfyUI's samplers have this shape) and a model callable
``model(x, sigma, **extra_args)`` that runs the recurrent DiT. The model adapter reads a
:class:`StreamContext` from ``extra_args["model_options"]["transformer_options"][CONTEXT_KEY]``:

- **streaming**: for chunk t (``Tc`` latent frames), the whole sampler runs on the chunk's slice; the
  k-th model evaluation continues from the states that the k-th evaluation of chunk t−1 left in the
  :class:`~rehyat.streaming.store.StateStore` and leaves its own. Evaluation k must have the same
  sigma in every chunk, otherwise the sampler is adaptive or x-dependent and cannot stream.
- **sweep**: the sampler runs once over the full latent; each model evaluation is computed chunk
  after chunk with fresh states (any sampler works, adaptive ones included).

Ancestral / SDE samplers get a :class:`~rehyat.streaming.noise.FrameNoiseSampler` so both orders
inject the same noise. Pure PyTorch: never imports ComfyUI.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import require_int
from .noise import FrameNoiseSampler
from .store import StateKey, StateStore

Order = Literal["streaming", "sweep"]
ORDERS: tuple[str, ...] = ("streaming", "sweep")
CONTEXT_KEY = "rehyat_stream"  # transformer_options entry read by the model adapter
NON_STREAMING_SAMPLERS: tuple[str, ...] = ("dpm_adaptive", "dpm_fast")


@dataclass(frozen=True)
class ChunkProgress:
    """One progress report: chunk ``chunk`` of ``chunks`` (1-based) at step ``step`` of ``steps``.

    ``latent`` is the clip so far (finished chunks, the current chunk's latest denoised estimate);
    ``finished`` is True once per chunk when its final latent has landed (streaming), or once per
    step when the last chunk of that step's forward ran (sweep).
    """

    chunk: int
    chunks: int
    step: int
    steps: int
    order: str
    latent: Tensor | None = None
    finished: bool = False
    frame_start: int = 0
    frame_end: int = 0


ProgressHook = Callable[[ChunkProgress], None]


@dataclass
class StreamContext:
    """What the model adapter needs to run one model call of a chunked sampler.

    Attributes:
        order: "streaming" or "sweep".
        store: the state store (streaming only).
        frame_offset: absolute latent frame of the current chunk's first frame (streaming).
        save_states: whether this chunk's states are needed later (False on the last chunk).
        evaluation: index of the current model evaluation within the chunk's sampler run.
        on_forward_chunk: called by the adapter after each chunk of a sweep forward (index, count).
        latent_hw: the full latent's spatial size; a call of another size (area conds) is refused.
    """

    order: str
    store: StateStore | None = None
    frame_offset: int = 0
    save_states: bool = True
    evaluation: int = 0
    on_forward_chunk: Callable[[int, int], None] | None = None
    latent_hw: tuple[int, int] | None = None
    _occurrences: Counter = field(default_factory=Counter)

    def begin_evaluation(self, index: int) -> None:
        """Start model evaluation ``index`` (resets the per-evaluation conditioning counters)."""
        self.evaluation = index
        self._occurrences.clear()

    def keys_for_call(self, cond_or_uncond: list[int], batch_size: int) -> list[StateKey]:
        """State keys of one model call whose batch is ``len(cond_or_uncond)`` blocks of ``batch_size``.

        ComfyUI batches conditionings in one call or runs them apart (``cond_or_uncond``);
        a conditioning's identity is (its value, how many times that value was seen before in this
        evaluation), so both ways find the same states.
        """
        keys = []
        for value in cond_or_uncond:
            identity = (int(value), self._occurrences[int(value)])
            self._occurrences[int(value)] += 1
            keys.extend(StateKey(self.evaluation, identity, item) for item in range(batch_size))
        return keys


def check_streamable(sampler_name: str) -> None:
    """Refuse samplers whose evaluation sigmas depend on the whole tensor (they cannot stream)."""
    if sampler_name in NON_STREAMING_SAMPLERS:
        raise ValueError(
            f"sampler {sampler_name!r} chooses its steps adaptively from the whole latent, so it cannot "
            "run chunk by chunk (order='streaming'); pick a fixed-step sampler (euler, heun, dpmpp_2m, "
            "uni_pc, ...) or use order='sweep'"
        )


# CFG functions known to act per element (safe to stream); any other one is refused by name.
PER_ELEMENT_CFG_FUNCTIONS: tuple[str, ...] = ("epsilon_scaling_function",)


def check_streaming_model_options(model_options: dict) -> None:
    """Refuse CFG functions (other nodes' pre / post / replacement CFG) in the streaming order.

    Most take statistics over the whole latent (RescaleCFG's std, CFG-Zero*'s projection, APG's
    norms, frame-dependent video CFG) or re-run the model, so a chunk's result would depend on the
    frames of other chunks and streaming would silently differ from sweep.
    """
    functions = [model_options.get("sampler_cfg_function")]
    functions += list(model_options.get("sampler_pre_cfg_function") or [])
    functions += list(model_options.get("sampler_post_cfg_function") or [])
    for fn in functions:
        name = getattr(fn, "__name__", type(fn).__name__)
        if fn is not None and name not in PER_ELEMENT_CFG_FUNCTIONS:
            raise ValueError(
                f"another node installed the CFG function {name!r}, which may look at the whole latent or "
                "re-run the model: streaming would make each chunk depend on the others' frames — use "
                "order='sweep' or remove that node"
            )


def accepts_noise_sampler(sampler_function: Callable) -> bool:
    """Whether ``sampler_function`` takes a ``noise_sampler`` keyword (ancestral / SDE samplers)."""
    try:
        return "noise_sampler" in inspect.signature(sampler_function).parameters
    except (TypeError, ValueError):
        return False


def with_context(extra_args: dict, context: StreamContext, **overrides: Any) -> dict:
    """A copy of ``extra_args`` whose model options carry ``context`` (the dicts are copied, not mutated)."""
    model_options = dict(extra_args.get("model_options") or {})
    transformer_options = dict(model_options.get("transformer_options") or {})
    transformer_options[CONTEXT_KEY] = context
    model_options["transformer_options"] = transformer_options
    return {**extra_args, "model_options": model_options, **overrides}


class _SigmaSchedule:
    """Sigmas of chunk 0's evaluations; later chunks must evaluate at the same sigmas.

    ``reference`` given: the sigmas a previous run's chunks evaluated at (a resumed clip), and every
    chunk is checked against them.
    """

    def __init__(self, reference: list[float] | None = None) -> None:
        self.reference: list[float] = list(reference or [])
        self.known = reference is not None
        self.seen = 0

    def start_chunk(self) -> None:
        self.seen = 0

    def check(self, chunk: int, sigma: Tensor) -> int:
        value = float(sigma.flatten()[0])
        index = self.seen
        self.seen += 1
        if chunk == 0 and not self.known:
            self.reference.append(value)
        elif index >= len(self.reference) or not math.isclose(value, self.reference[index], rel_tol=1e-6,
                                                                abs_tol=1e-9):
            expected = self.reference[index] if index < len(self.reference) else "no evaluation"
            raise ValueError(
                f"chunk {chunk}: model evaluation {index} ran at sigma {value:.6g} but chunk 0 ran it at "
                f"{expected}: this sampler picks its steps from the latent itself (adaptive or x-dependent), "
                "so it cannot stream chunk by chunk — use a fixed-step sampler or order='sweep'"
            )
        return index

    def end_chunk(self, chunk: int) -> None:
        if (chunk or self.known) and self.seen != len(self.reference):
            raise ValueError(
                f"chunk {chunk} made {self.seen} model evaluations but chunk 0 made {len(self.reference)}: "
                "this sampler cannot stream chunk by chunk — use a fixed-step sampler or order='sweep'"
            )


class _ChunkModel:
    """The sampler's model restricted to frames ``[f0, f1)``: slices the inpainting inputs, counts
    evaluations, checks sigmas and interruption, and tells the adapter which evaluation runs."""

    def __init__(self, model: Any, f0: int, f1: int, frames: int, on_evaluation: Callable[[Tensor], None]):
        self._model = copy.copy(model)  # a KSamplerX0Inpaint: its latent_image / noise are per clip
        for name in ("latent_image", "noise"):
            value = getattr(model, name, None)
            if isinstance(value, Tensor) and value.ndim == 5 and value.shape[2] == frames:
                setattr(self._model, name, value[:, :, f0:f1])
        self._on_evaluation = on_evaluation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        self._on_evaluation(sigma)
        return self._model(x, sigma, **kwargs)


def slice_frames(value: Any, f0: int, f1: int, frames: int) -> Any:
    """``value[:, :, f0:f1]`` for a per-frame 5-D tensor of ``frames`` frames; anything else unchanged."""
    if isinstance(value, Tensor) and value.ndim == 5 and value.shape[2] == frames:
        return value[:, :, f0:f1]
    return value


def check_engine_inputs(x: Tensor, sigmas: Tensor, chunk_frames: int) -> None:
    """Refuse what the chunked samplers cannot run, with one line naming the argument.

    ``x`` must be a video latent ``(B, C, T, H, W)``, ``chunk_frames`` an integer ≥ 1 (0 would divide
    by zero, a negative one would silently return the noise unchanged) and ``sigmas`` a 1-D schedule of
    at least two finite values (one step or more).
    """
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"chunked sampling needs a video latent (B, C, T, H, W); got shape {shape}")
    require_int("chunk_frames", chunk_frames, low=1)
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 values (≥ 1 step); got shape {shape}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"sigmas must be finite; got {sigmas.tolist()}")


class ChunkStream:
    """The streaming order, one chunk per call: what persists between the chunks of one run.

    :func:`sample_streaming` runs every chunk of a clip in one call; a caller that must do something
    between chunks — e.g. run a chunk's high-noise steps with one model and its low-noise steps with
    another (two-expert Wan2.2), each model with its own ``ChunkStream`` and state store — calls
    :meth:`run` itself, chunk after chunk, in order.

    Args:
        sampler_function: k-diffusion-style sampler (``fn(model, x, sigmas, extra_args, callback,
            disable, **options)``).
        frames: latent frames of the whole clip.
        chunk_frames: latent frames per chunk (the model's Tc).
        store: where evaluation k's states wait for the next chunk.
        seed: the run's seed (ancestral / SDE noise is drawn per frame from it).
        model_options: the sampler's model options (CFG functions that look at the whole latent are
            refused here).
        latent_hw: the clip latent's spatial size.
        sampler_options: extra keyword options for the sampler (a noise sampler is added when the
            sampler takes one and none is given).
        first_chunk: the chunk to run first — > 0 continues a clip whose earlier chunks ran before
            (their states are in ``store``; ``evaluation_sigmas`` must then be given).
        evaluation_sigmas: the sigma of every model evaluation of one chunk's sampler run, as the
            earlier chunks ran them (:attr:`evaluation_sigmas` of that run); each chunk must match.
        keep_final_states: also keep the last chunk's states in ``store`` (to extend the clip later).
    """

    def __init__(
        self, sampler_function: Callable, *, frames: int, chunk_frames: int, store: StateStore, seed: int = 0,
        model_options: dict | None = None, latent_hw: tuple[int, int] | None = None,
        sampler_options: dict | None = None, first_chunk: int = 0,
        evaluation_sigmas: list[float] | None = None, keep_final_states: bool = False,
    ) -> None:
        require_int("frames", frames, low=1)
        require_int("chunk_frames", chunk_frames, low=1)
        check_streaming_model_options(model_options or {})
        self.sampler_function = sampler_function
        self.frames, self.chunk_frames = frames, chunk_frames
        self.chunks = math.ceil(frames / chunk_frames)
        require_int("first_chunk", first_chunk, low=0, high=self.chunks - 1)
        if first_chunk and evaluation_sigmas is None:
            raise ValueError("a stream starting at a later chunk needs the earlier chunks' evaluation_sigmas")
        self.seed = int(seed)
        self.context = StreamContext(order="streaming", store=store, latent_hw=latent_hw)
        self.options = dict(sampler_options or {})
        self.draw_noise = accepts_noise_sampler(sampler_function) and "noise_sampler" not in self.options
        self.keep_final_states = bool(keep_final_states)
        self._schedule = _SigmaSchedule(evaluation_sigmas)
        self._next = first_chunk

    @property
    def evaluation_sigmas(self) -> list[float]:
        """The sigma of each model evaluation of one chunk's sampler run (known after the first chunk)."""
        return list(self._schedule.reference)

    def frames_of(self, chunk: int) -> tuple[int, int]:
        """Latent frames ``[f0, f1)`` of chunk ``chunk``."""
        require_int("chunk", chunk, low=0, high=self.chunks - 1)
        return chunk * self.chunk_frames, min((chunk + 1) * self.chunk_frames, self.frames)

    def run(
        self, chunk: int, model: Any, x_chunk: Tensor, sigmas: Tensor, extra_args: dict, *,
        callback: Callable[[dict], None] | None = None, disable: bool | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> Tensor:
        """Run the sampler on chunk ``chunk`` (the next one: chunks run in order, each once).

        ``model`` is the sampler's model for the **whole clip** (its per-clip ``latent_image`` /
        ``noise`` and ``extra_args["denoise_mask"]`` are sliced to the chunk); ``x_chunk`` the chunk's
        noised latent ``(B, C, f1 − f0, H, W)``; ``callback`` the sampler's per-step callback.
        """
        if chunk != self._next:
            raise ValueError(
                f"chunk {chunk} cannot run now: the recurrent states hold chunk {self._next - 1}'s past, so "
                f"chunks run in order 0, 1, …, {self.chunks - 1} — the next one is {self._next}"
            )
        f0, f1 = self.frames_of(chunk)
        if x_chunk.ndim != 5 or x_chunk.shape[2] != f1 - f0:
            raise ValueError(f"chunk {chunk} covers {f1 - f0} latent frames; got x_chunk of shape "
                             f"{tuple(x_chunk.shape)}")
        context, schedule = self.context, self._schedule
        context.frame_offset, context.save_states = f0, chunk < self.chunks - 1 or self.keep_final_states
        schedule.start_chunk()

        def on_evaluation(sigma: Tensor) -> None:
            if check_interrupt is not None:
                check_interrupt()
            context.begin_evaluation(schedule.check(chunk, sigma))

        chunk_model = _ChunkModel(model, f0, f1, self.frames, on_evaluation)
        mask = slice_frames(extra_args.get("denoise_mask"), f0, f1, self.frames)
        chunk_args = with_context(extra_args, context, denoise_mask=mask)
        options = dict(self.options)
        if self.draw_noise:
            options["noise_sampler"] = FrameNoiseSampler(self.seed, x_chunk, f0)
        out = self.sampler_function(chunk_model, x_chunk, sigmas, extra_args=chunk_args, callback=callback,
                                    disable=disable, **options)
        schedule.end_chunk(chunk)
        self._next += 1
        return out


def sample_streaming(
    sampler_function: Callable, model: Any, x: Tensor, sigmas: Tensor, *, extra_args: dict,
    chunk_frames: int, store: StateStore, sampler_options: dict | None = None,
    callback: Callable[[dict], None] | None = None, disable: bool | None = None,
    progress: ProgressHook | None = None, check_interrupt: Callable[[], None] | None = None,
    chunk_scope: Callable[[int, int], AbstractContextManager] | None = None,
    on_stream: Callable[[ChunkStream], None] | None = None, keep_final_states: bool = False,
) -> Tensor:
    """Run ``sampler_function`` chunk after chunk (streaming order); returns the full latent.

    Args:
        sampler_function: k-diffusion-style sampler (``fn(model, x, sigmas, extra_args, callback,
            disable, **options)``).
        model: the sampler's model (ComfyUI: ``KSamplerX0Inpaint``); its ``latent_image`` / ``noise``
            and ``extra_args["denoise_mask"]`` are sliced per chunk.
        x: the noised starting latent ``(B, C, T, H, W)``.
        sigmas: the schedule (every chunk runs all of it).
        extra_args: the sampler's extra args (``model_options``, ``seed``, ``denoise_mask``).
        chunk_frames: latent frames per chunk (the model's Tc).
        store: where evaluation k's states wait for the next chunk.
        sampler_options: extra keyword options for the sampler (a noise sampler is added when the
            sampler takes one and none is given).
        callback: the sampler's step callback (k-diffusion dict); its ``"i"`` is rescaled to the run's
            ``steps`` and ``"denoised"`` / ``"x"`` are the whole clip so far.
        progress: receives a :class:`ChunkProgress` per step and once per finished chunk.
        check_interrupt: called before every model evaluation (raises to cancel).
        chunk_scope: context manager entered around each chunk's run (e.g. to slice conditioning).
        on_stream: receives the run's :class:`ChunkStream` before the first chunk (e.g. to read its
            :attr:`~ChunkStream.evaluation_sigmas` afterwards).
        keep_final_states: keep the last chunk's states in ``store`` too (to extend the clip later).
    """
    check_engine_inputs(x, sigmas, chunk_frames)
    frames, steps = x.shape[2], len(sigmas) - 1
    stream = ChunkStream(sampler_function, frames=frames, chunk_frames=chunk_frames, store=store,
                         seed=int(extra_args.get("seed") or 0), model_options=extra_args.get("model_options"),
                         latent_hw=tuple(x.shape[3:]), sampler_options=sampler_options,
                         keep_final_states=keep_final_states)
    if on_stream is not None:
        on_stream(stream)
    chunks = stream.chunks
    result = x.clone()  # (B, C, T, H, W): finished chunks land here
    scope = chunk_scope or (lambda f0, f1: contextlib.nullcontext())
    for chunk in range(chunks):
        f0, f1 = stream.frames_of(chunk)

        def on_step(info: dict, chunk: int = chunk, f0: int = f0, f1: int = f1) -> None:
            result[:, :, f0:f1] = info["denoised"]
            step = int(info["i"]) + 1
            if callback is not None:
                done = chunk * steps + step
                callback({**info, "i": max(done * steps // (chunks * steps) - 1, 0), "denoised": result,
                          "x": result})
            if progress is not None:
                progress(ChunkProgress(chunk + 1, chunks, step, steps, "streaming", result, False, f0, f1))

        with scope(f0, f1):
            out = stream.run(chunk, model, x[:, :, f0:f1].clone(), sigmas, extra_args, callback=on_step,
                             disable=disable, check_interrupt=check_interrupt)
        result[:, :, f0:f1] = out
        if progress is not None:
            progress(ChunkProgress(chunk + 1, chunks, steps, steps, "streaming", result, True, f0, f1))
    return result


def sample_sweep(
    sampler_function: Callable, model: Any, x: Tensor, sigmas: Tensor, *, extra_args: dict,
    chunk_frames: int, sampler_options: dict | None = None, callback: Callable[[dict], None] | None = None,
    disable: bool | None = None, progress: ProgressHook | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> Tensor:
    """Run ``sampler_function`` once over the whole latent (sweep order); each model evaluation is
    computed chunk by chunk with fresh states by the adapter. Arguments as :func:`sample_streaming`."""
    check_engine_inputs(x, sigmas, chunk_frames)
    frames, steps = x.shape[2], len(sigmas) - 1
    chunks = math.ceil(frames / chunk_frames)
    state = {"step": 0, "denoised": None}

    def on_forward_chunk(index: int, count: int) -> None:
        if check_interrupt is not None:
            check_interrupt()
        if progress is not None:
            step = min(state["step"] + 1, steps)
            f0, f1 = index * chunk_frames, min((index + 1) * chunk_frames, frames)
            progress(ChunkProgress(index + 1, count, step, steps, "sweep", state["denoised"], False, f0, f1))

    context = StreamContext(order="sweep", on_forward_chunk=on_forward_chunk, latent_hw=tuple(x.shape[3:]))
    options = dict(sampler_options or {})
    if accepts_noise_sampler(sampler_function) and "noise_sampler" not in options:
        options["noise_sampler"] = FrameNoiseSampler(int(extra_args.get("seed") or 0), x, 0)

    def on_evaluation(sigma: Tensor) -> None:
        if check_interrupt is not None:
            check_interrupt()

    def on_step(info: dict) -> None:
        state["step"], state["denoised"] = int(info["i"]) + 1, info["denoised"]
        if callback is not None:
            callback(info)
        if progress is not None:
            progress(ChunkProgress(chunks, chunks, state["step"], steps, "sweep", info["denoised"], True, 0,
                                   frames))

    sweep_model = _ChunkModel(model, 0, frames, frames, on_evaluation)
    return sampler_function(sweep_model, x, sigmas, extra_args=with_context(extra_args, context),
                            callback=on_step, disable=disable, **options)

