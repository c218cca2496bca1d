"""Will my clip fit? Peak GPU memory of softmax, context windows and ReHyAt for one clip.

Per method, the peak is resident weights (+ φ for ReHyAt) + one evaluation's working memory
(:func:`rehyat.planning.memory.evaluation_memory`) + the sampler's latent-sized buffers + the
streaming state store when it is kept on the GPU. Sizes of the store and the saved clip state come
from :func:`rehyat.streaming.state_store_bytes`; evaluations and conditionings from
:mod:`rehyat.streaming.accounting`.

Sampler buffers: a whole-latent sampler (stock KSampler, context windows, sweep) keeps about
:data:`SAMPLER_LATENT_BUFFERS` fp32 latent-sized tensors (measured by benchmarks/sampler.py: sweep
grows by ≈ 11 latents from 161 to 481 frames at cfg 5); streaming runs the sampler on one chunk, so
those buffers are chunk-sized and only the noise, the input and the output span the clip.

CFG: ComfyUI batches cond and uncond into one evaluation when it estimates they fit, and runs them
one after the other otherwise; a method is planned batched when that fits, else unbatched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConversionConfig, require_int, require_real
from ..profiling.cases import ContextWindowCase, ReHyAtCase, SoftmaxCase
from ..profiling.presets import LatentGrid
from ..streaming.accounting import conditionings_per_evaluation, evaluations_per_step
from ..streaming.store import resolve_state_device, state_store_bytes
from .memory import evaluation_memory
from .models import PlanModel
from .weights import ACTIVATION_BYTES, phi_bytes, weight_bytes

GIB = 2**30
LATENT_BYTES = 4  # samplers keep latents in fp32
SAMPLER_LATENT_BUFFERS = 11  # whole-latent tensors of a whole-latent sampler at cfg (see module doc)
STREAMING_CLIP_BUFFERS = 3  # noise, input latent and output span the clip in streaming
RESERVE_BYTES = GIB  # CUDA context, cuBLAS workspace, allocator fragmentation (not measured)
SAFETENSORS_ENTRY_BYTES = 128  # header JSON per tensor, upper bound
TRAINED_VIDEO_FRAMES = 81  # Wan's training length: softmax beyond it degrades (why windows exist)


@dataclass(frozen=True)
class PlanRequest:
    """One clip to plan (``python -m rehyat plan`` options)."""

    model: PlanModel
    gpu_memory_gib: float
    weights: str
    width: int
    height: int
    frames: int
    steps: int
    cfg: float
    sampler: str = "euler"
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    window_frames: int = 81  # context windows, video frames (WanContextWindowsManual defaults)
    window_overlap: int = 16

    def __post_init__(self) -> None:
        require_real("--gpu-memory", self.gpu_memory_gib, low=0.1, high=4096.0)
        stride = self.model.pixels_per_token
        for name, value in (("width", self.width), ("height", self.height)):
            require_int(f"--size {name}", value, low=stride)
            if value % stride:
                raise ValueError(f"--size {name} must be a multiple of {stride} px for {self.model.name}; "
                                 f"got {value}")
        require_int("--frames", self.frames, low=1, high=100_000)
        if (self.frames - 1) % self.model.time_stride:
            raise ValueError(f"--frames must be 1 + {self.model.time_stride}·k (e.g. 81, 161, 481); "
                             f"got {self.frames}")
        require_int("--steps", self.steps, low=1, high=10_000)
        require_real("--cfg", self.cfg, low=0.0, high=100.0)
        weight_bytes(1, self.weights)  # validates --weights

    @property
    def latent(self) -> LatentGrid:
        """The clip's latent grid."""
        s = self.model.space_stride
        return LatentGrid(1 + (self.frames - 1) // self.model.time_stride, self.height // s, self.width // s)


def _rehyat_case(conversion: ConversionConfig) -> ReHyAtCase:
    attention = conversion.attention
    return ReHyAtCase(chunk_frames=attention.chunk_frames, overlap_frames=attention.overlap_frames,
                      form="recurrent", feature_map=attention.feature_map)


def plan(request: PlanRequest) -> dict[str, Any]:
    """The plan of ``request``: every method's peak, the choice that fits, the clip state's size."""
    model, shape, latent = request.model, request.model.shape, request.latent
    conditionings = conditionings_per_evaluation(request.cfg)
    evaluations = request.steps * evaluations_per_step(request.sampler)
    case = _rehyat_case(request.conversion)
    p = latent.tokens_per_frame(shape.patch)
    frames = latent.frames
    gpu = int(request.gpu_memory_gib * GIB)
    weights = weight_bytes(model.parameters, request.weights)
    phi = phi_bytes(shape, case.feature_map)
    latent_bytes = shape.in_dim * frames * latent.height * latent.width * LATENT_BYTES
    chunk_latent = latent_bytes * min(case.chunk_frames, frames) // frames
    window_frames = 1 + (request.window_frames - 1) // model.time_stride
    window_overlap = 1 + (request.window_overlap - 1) // model.time_stride if request.window_overlap else 0
    windows = ContextWindowCase(window_frames, min(window_overlap, window_frames - 1))
    store = state_store_bytes(
        evaluations=evaluations, conditionings=conditionings, batch=1, blocks=shape.num_layers,
        heads=shape.num_heads, head_dim=shape.head_dim, feature_dim=case.feature_map.feature_dim,
        overlap_frames=case.overlap_frames, tokens_per_frame=p, overlap_bytes_per_element=ACTIVATION_BYTES)

    def evaluation(method_case, batch: int) -> dict[str, int]:
        memory = evaluation_memory(shape, method_case, latent, batch=batch, element_size=ACTIVATION_BYTES)
        return memory.to_dict()

    rows: list[dict[str, Any]] = []

    def add(method: str, method_case, resident: int, buffers: int, *, state_device: str | None = None,
            store_on_gpu: int = 0, host: int = 0) -> None:
        for batch in sorted({conditionings, 1}, reverse=True):
            parts = {"weights": weights, "phi": resident - weights,
                     "evaluation": evaluation(method_case, batch), "sampler_buffers": buffers,
                     "state_store": store_on_gpu}
            peak = resident + parts["evaluation"]["total"] + buffers + store_on_gpu
            if peak + RESERVE_BYTES <= gpu or batch == 1:
                break
        rows.append({"method": method, "state_device": state_device,
                     "cfg_batched": batch > 1 or conditionings == 1,
                     "gpu_peak_bytes": peak, "gpu_peak_gib": peak / GIB, "host_state_bytes": host,
                     "fits": peak + RESERVE_BYTES <= gpu, "parts": parts})

    whole_buffers = SAMPLER_LATENT_BUFFERS * latent_bytes
    add("softmax", SoftmaxCase(), weights, whole_buffers)
    add("context_windows", windows, weights, whole_buffers)
    stream_buffers = STREAMING_CLIP_BUFFERS * latent_bytes + SAMPLER_LATENT_BUFFERS * chunk_latent
    add("rehyat_streaming", case, weights + phi, stream_buffers, state_device="gpu", store_on_gpu=store)
    add("rehyat_streaming", case, weights + phi, stream_buffers, state_device="cpu", host=store)
    gpu_row = rows[-2]
    free = gpu - (gpu_row["gpu_peak_bytes"] - store)
    auto = resolve_state_device("auto", torch.device("cuda"), store_bytes=store, free_bytes=max(free, 0))
    auto_row = dict(rows[-2] if auto.type == "cuda" else rows[-1])
    auto_row["state_device"] = f"auto→{'gpu' if auto.type == 'cuda' else 'cpu'}"
    rows.append(auto_row)
    add("rehyat_sweep", case, weights + phi, whole_buffers)
    choice = _choose(rows, request.frames)
    state_count = evaluations * conditionings * shape.num_layers
    return {
        "model": {"name": model.name, "parameters": model.parameters, "experts": model.experts,
                  "resident_experts": 1, "weights": request.weights, "weight_bytes": weights,
                  "phi_bytes": phi,
                  "shape": shape.to_dict()},
        "clip": {"width": request.width, "height": request.height, "video_frames": request.frames,
                 "latent": latent.to_dict() | {"tokens_per_frame": p, "tokens": frames * p},
                 "steps": request.steps, "cfg": request.cfg, "sampler": request.sampler,
                 "conditionings": conditionings, "evaluations_per_chunk": evaluations,
                 "chunk_frames": case.chunk_frames, "overlap_frames": case.overlap_frames,
                 "context_windows": {"window_frames": windows.window_frames,
                                     "overlap_frames": windows.overlap_frames}},
        "gpu_memory_bytes": gpu, "reserve_bytes": RESERVE_BYTES,
        "methods": rows,
        "choice": choice,
        "state_store_bytes": store,
        "clip_state_disk_bytes": clip_state_file_bytes(store, state_count),
        "assumptions": [
            "bf16/fp16 activations; fused (flash / memory-efficient) softmax attention: no N² term",
            "one expert resident (Wan2.2-A14B switches experts between steps)",
            "text encoder and VAE not resident while sampling (save the conditioning; decode afterwards "
            "or per chunk)",
            f"{RESERVE_BYTES // 2**20} MiB reserved for the CUDA context and fragmentation (not measured)",
            "working memory checked against CPU measurements (tests/test_planning_memory.py); no GPU "
            "measurement yet (python -m rehyat gpu-check)",
        ],
    }


def clip_state_file_bytes(store_bytes: int, states: int) -> int:
    """Safetensors size of a saved clip state: the store's tensors, ``frames_seen`` and the header
    (5 entries per state, :data:`SAFETENSORS_ENTRY_BYTES` each — an upper bound)."""
    return store_bytes + states * (8 + 5 * SAFETENSORS_ENTRY_BYTES) + 8


def _choose(rows: list[dict[str, Any]], video_frames: int) -> dict[str, Any]:
    """The first fitting method in order of preference (see the reasons)."""
    order = [("softmax", None, "the original model fits and the clip is within its training length"),
             ("rehyat_streaming", "gpu", "ReHyAt streaming, states on the GPU: fastest ReHyAt order"),
             ("rehyat_streaming", "cpu", "ReHyAt streaming, states offloaded to pinned CPU memory"),
             ("rehyat_sweep", None, "ReHyAt sweep: only one step's states"),
             ("context_windows", None, "context windows fit where ReHyAt does not"),
             ("softmax", None, "softmax fits (beyond its training length)")]
    for position, (method, device, reason) in enumerate(order):
        if position == 0 and video_frames > TRAINED_VIDEO_FRAMES:
            continue
        for row in rows:
            if row["method"] == method and row["state_device"] == device and row["fits"]:
                return {"method": method, "state_device": device, "gpu_peak_gib": row["gpu_peak_gib"],
                        "reason": reason}
    smallest = min(rows, key=lambda r: r["gpu_peak_bytes"])
    return {"method": None, "state_device": None, "gpu_peak_gib": None,
            "reason": f"nothing fits: the smallest peak is {smallest['method']} "
                      f"({smallest['gpu_peak_gib']:.1f} GiB + {RESERVE_BYTES / GIB:.0f} GiB reserve); "
                      "use smaller weights (fp8 / q8 / q4), fewer pixels, or a larger GPU"}


def format_plan(result: dict[str, Any]) -> str:
    """The plan as a text table."""
    clip, model = result["clip"], result["model"]
    lines = [f"{model['name']} ({model['parameters'] / 1e9:.2f} B parameters, {model['weights']}: "
             f"{model['weight_bytes'] / GIB:.2f} GiB; φ {model['phi_bytes'] / GIB:.2f} GiB) — "
             f"{clip['width']}×{clip['height']}, {clip['video_frames']} frames "
             f"({clip['latent']['frames']} latent × {clip['latent']['tokens_per_frame']} tokens), "
             f"{clip['steps']} steps, cfg {clip['cfg']}; GPU {result['gpu_memory_bytes'] / GIB:.1f} GiB",
             f"{'method':<18} {'states':<9} {'peak GiB':>9} {'cfg batched':>11} {'fits':>5}"]
    for row in result["methods"]:
        lines.append(f"{row['method']:<18} {row['state_device'] or '-':<9} {row['gpu_peak_gib']:>9.2f} "
                     f"{'yes' if row['cfg_batched'] else 'no':>11} {'yes' if row['fits'] else 'no':>5}")
    choice = result["choice"]
    pick = str(choice["method"])
    if choice["state_device"]:
        pick += f" ({choice['state_device']})"
    lines.append(f"choice: {pick} — {choice['reason']}")
    lines.append(f"streaming state store: {result['state_store_bytes'] / GIB:.2f} GiB (host RAM with states "
                 f"on the CPU); saved clip state on disk: {result['clip_state_disk_bytes'] / GIB:.2f} GiB")
    return "\n".join(lines)

