"""A profile: analytic FLOPs of every configuration (one length, a length sweep, a Tc × To sweep)
and, optionally, measured latency and memory per case and length.

The result is a plain JSON-ready dict (the report); :mod:`.report` prints it and :mod:`.plots` draws it.
Per case, at every length:

- ``attention_tflops``: one self-attention layer (q/k/v/o projections + attention core) of one
  block — a converted block when the case converts any — over the whole latent;
- ``attention_core_tflops``: the same without the projections;
- ``block_tflops``: that whole block (self-attention, cross-attention, FFN);
- ``model_tflops``: the whole DiT, one model evaluation (a CFG step is two);
- ``mean_block_tflops``: all blocks' FLOPs averaged over the model's blocks.

Context windows sum every quantity over the windows of one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..flops import LINEAR_ACCOUNTINGS, LinearAccounting
from .analytic import model_flops
from .cases import Case, ContextWindowCase, ReHyAtCase, SoftmaxCase, UniformHybridCase
from .measure import Measurement
from .presets import LatentGrid, WanShape

TERA = 1e12
ACCOUNTING_NOTE = (
    "matmul/conv FLOPs only (2 per multiply-add; norms, RoPE, activations, modulation not counted), "
    "batch 1, one model evaluation (a CFG step is two). linear_accounting='incremental': the kernels of "
    "rehyat.ops (φ on reading queries and absorbed keys, one absorption per key); 'paper': φ on every token "
    "and the linear state rebuilt per chunk, which reproduces the paper's block TFLOPs."
)
DEFAULT_CHUNKS = (1, 2, 3, 4, 5, 6, 7)
DEFAULT_OVERLAPS = (0, 1, 2)


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile.

    Attributes:
        shape: the model's sizes. latent: the reference latent (its frame count is the main length).
        lengths: latent frame counts of the length sweep (default: the latent's only).
        rehyat: the ReHyAt configuration. rates: uniform-hybrid rates R. context_windows: the
        context-window setting (None: left out). chunk_sweep / overlap_sweep: the Tc × To grid.
        linear_accounting: "incremental" (what rehyat.ops computes) or "paper".
    """

    shape: WanShape
    latent: LatentGrid
    rehyat: ReHyAtCase = field(default_factory=ReHyAtCase)
    lengths: tuple[int, ...] = ()
    rates: tuple[int, ...] = (2, 4, 8)
    context_windows: ContextWindowCase | None = field(default_factory=ContextWindowCase)
    chunk_sweep: tuple[int, ...] = DEFAULT_CHUNKS
    overlap_sweep: tuple[int, ...] = DEFAULT_OVERLAPS
    linear_accounting: LinearAccounting = "incremental"

    def __post_init__(self) -> None:
        if self.linear_accounting not in LINEAR_ACCOUNTINGS:
            raise ValueError(f"linear_accounting must be one of {LINEAR_ACCOUNTINGS}; "
                             f"got {self.linear_accounting!r}")
        lengths = tuple(self.lengths) or (self.latent.frames,)
        for frames in lengths:
            self.latent.with_frames(frames)  # validates: ≥ 1
        object.__setattr__(self, "lengths", tuple(sorted(set(lengths))))
        for name in ("rates", "chunk_sweep", "overlap_sweep"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for rate in self.rates:
            UniformHybridCase(rate)  # validates R ≥ 1
        for tc in self.chunk_sweep:
            ReHyAtCase(tc, 0)
        for to in self.overlap_sweep:
            ReHyAtCase(1, to)
        if self.rehyat.converted_blocks is not None and self.rehyat.converted_blocks > self.shape.num_layers:
            raise ValueError(f"converted_blocks must be in [0, {self.shape.num_layers}] for "
                             f"{self.shape.name}; got {self.rehyat.converted_blocks}")

    def cases(self) -> dict[str, Case]:
        """The compared cases by report key: softmax, rehyat, uniform_hybrid_R*, context_windows."""
        cases: dict[str, Case] = {"softmax": SoftmaxCase(), "rehyat": self.rehyat}
        for rate in self.rates:
            cases[f"uniform_hybrid_R{rate}"] = UniformHybridCase(rate, self.rehyat.converted_blocks,
                                                                 self.rehyat.feature_map)
        if self.context_windows is not None:
            cases["context_windows"] = self.context_windows
        return cases


def flops_entry(case: Case, shape: WanShape, latent: LatentGrid, linear_accounting: LinearAccounting) -> dict:
    """The FLOP quantities of one case on one latent (see the module docstring), in TFLOPs."""
    model = model_flops(case, shape, latent, linear_accounting=linear_accounting)
    per_window = len(model.blocks) // model.evaluations
    reference = model.representative_block()
    index = model.blocks.index(reference) % per_window
    same_block = [model.blocks[w * per_window + index] for w in range(model.evaluations)]
    return {
        "label": case.label,
        "config": case.to_dict(),
        "attention_tflops": sum(b.attention for b in same_block) / TERA,
        "attention_core_tflops": sum(b.attention_core.total for b in same_block) / TERA,
        "block_tflops": sum(b.total for b in same_block) / TERA,
        "model_tflops": model.total / TERA,
        "mean_block_tflops": sum(b.total for b in model.blocks) / per_window / TERA,
        "model_attention_tflops": model.attention / TERA,
        "evaluations": model.evaluations,
    }


def chunk_sweep(request: ProfileRequest) -> dict[str, list[dict]]:
    """One converted block's attention and block TFLOPs for every Tc and To of the request (Fig. 4)."""
    out: dict[str, list[dict]] = {}
    for to in request.overlap_sweep:
        rows = []
        for tc in request.chunk_sweep:
            case = replace(request.rehyat, chunk_frames=tc, overlap_frames=to)
            entry = flops_entry(case, request.shape, request.latent, request.linear_accounting)
            rows.append({"chunk_frames": tc, "overlap_frames": to,
                         **{k: entry[k] for k in ("attention_tflops", "block_tflops", "model_tflops")}})
        out[f"To={to}"] = rows
    return out


Measurer = Callable[[str, Case, LatentGrid], Measurement]


def profile(request: ProfileRequest, *, measure: Measurer | None = None,
            measured_cases: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the report of ``request``; with ``measure``, also latency and memory per case and length.

    Every case is measured unless ``measured_cases`` names the keys to measure.
    ``measure(key, case, latent)`` returns a :class:`Measurement` (e.g. a subprocess per case); a case
    it cannot run (ValueError/RuntimeError) is reported with its reason instead of numbers.
    """
    shape, cases = request.shape, request.cases()
    report: dict[str, Any] = {
        "model": shape.to_dict(),
        "latent": request.latent.to_dict(),
        "linear_accounting": request.linear_accounting,
        "accounting": ACCOUNTING_NOTE,
    }
    for key, case in cases.items():
        report[key] = flops_entry(case, shape, request.latent, request.linear_accounting)
    softmax_model = report["softmax"]["model_tflops"]
    for key in cases:
        report[key]["model_share_of_softmax"] = report[key]["model_tflops"] / softmax_model
    report["chunk_sweep"] = chunk_sweep(request)
    lengths = []
    for frames in request.lengths:
        latent = request.latent.with_frames(frames)
        row: dict[str, Any] = {"latent_frames": frames, "video_frames": latent.video_frames, "cases": {}}
        for key, case in cases.items():
            entry = flops_entry(case, shape, latent, request.linear_accounting)
            row["cases"][key] = {k: entry[k] for k in ("attention_tflops", "block_tflops", "model_tflops")}
            if measure is not None and (measured_cases is None or key in measured_cases):
                if progress:
                    progress(f"measuring {case.label} at {frames} latent frames")
                try:
                    row["cases"][key]["measured"] = measure(key, case, latent).to_dict()
                except (ValueError, RuntimeError) as exc:
                    row["cases"][key]["measured"] = {"error": str(exc)}
        lengths.append(row)
    report["lengths"] = lengths
    return report
