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
    StreamContext,
    accepts_noise_sampler,
    check_streamable,
    check_streaming_model_options,
    sample_streaming,
    sample_sweep,
)
from .noise import FrameNoiseSampler, frame_noise, frame_noise_seed
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
    "FrameNoiseSampler",
    "ProgressiveWanDecoder",
    "StateKey",
    "StateStore",
    "StreamContext",
    "accepts_noise_sampler",
    "check_streamable",
    "check_streaming_model_options",
    "frame_noise",
    "frame_noise_seed",
    "resolve_state_device",
    "sample_streaming",
    "sample_sweep",
    "state_store_bytes",
]
