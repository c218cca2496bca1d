"""Chunked sampling of a recurrent ReHyAt DiT: state store, noise, streaming and sweep drivers.

Why both orders are exact (the recurrent forward equals the parallel causal one, and a chunk's
trajectory never depends on later chunks): :mod:`rehyat.streaming.driver`; the layers around it:
docs/architecture.md.
"""

from .decode import ProgressiveWanDecoder
from .driver import (
    CONTEXT_KEY,
    NON_STREAMING_SAMPLERS,
    ORDERS,
    ChunkProgress,
    ChunkStream,
    StreamContext,
    accepts_noise_sampler,
    check_streamable,
    check_streaming_model_options,
    sample_streaming,
    sample_sweep,
)
from .noise import FrameNoiseSampler, frame_noise, frame_noise_seed, initial_frame_noise
from .resume import ResumeSettings, check_extendable, load_resume, resume_file_bytes, save_resume
from .store import (
    STATE_DEVICES,
    StateKey,
    StateStore,
    resolve_state_device,
    state_store_bytes,
)

__all__ = [
    "CONTEXT_KEY",
    "NON_STREAMING_SAMPLERS",
    "ORDERS",
    "STATE_DEVICES",
    "ChunkProgress",
    "ChunkStream",
    "FrameNoiseSampler",
    "ProgressiveWanDecoder",
    "ResumeSettings",
    "StateKey",
    "StateStore",
    "StreamContext",
    "accepts_noise_sampler",
    "check_extendable",
    "check_streamable",
    "check_streaming_model_options",
    "frame_noise",
    "frame_noise_seed",
    "initial_frame_noise",
    "load_resume",
    "resolve_state_device",
    "resume_file_bytes",
    "sample_streaming",
    "sample_sweep",
    "save_resume",
    "state_store_bytes",
]
