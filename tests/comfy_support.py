"""Helpers for tests that run against a real, provisioned ComfyUI.

ComfyUI is provisioned (never committed) by ``scripts/provision_comfyui.py``
into ``<repo>/.cache/comfyui`` or ``$REHYAT_COMFYUI_DIR``.  Tests that need it
use the :data:`requires_comfyui` marker or the :func:`comfy` fixture, which
skip with a clear reason when it is absent.  Set ``REHYAT_REQUIRE_COMFYUI=1``
(e.g. in CI) to turn those skips into failures.

Importing ComfyUI for tests goes through :func:`import_comfyui`, which forces
CPU mode before ``comfy.model_management`` is first imported.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ENV_DIR = "REHYAT_COMFYUI_DIR"
ENV_REQUIRE = "REHYAT_REQUIRE_COMFYUI"
MARKER_NAME = ".provisioned"
REPO_ROOT = Path(__file__).resolve().parent.parent
SKIP_REASON = "real ComfyUI not provisioned: run python scripts/provision_comfyui.py"

# ComfyUI's Wan2.1 detection (comfy/model_detection.py) hard-codes these.
WAN_HEAD_DIM = 128
WAN_FREQ_DIM = 256
WAN_TEXT_DIM = 4096  # umt5-xxl width; WanModel's default, not detected
WAN_PATCH_SIZE = (1, 2, 2)


def comfyui_dir() -> Path | None:
    """Return the provisioned ComfyUI directory, or None when it is absent.

    The directory is ``$REHYAT_COMFYUI_DIR`` if set, else ``<repo>/.cache/comfyui``;
    it counts only when the provisioning marker and ``comfy/`` are present.
    """
    env = os.environ.get(ENV_DIR)
    root = Path(env).expanduser() if env else REPO_ROOT / ".cache" / "comfyui"
    if (root / MARKER_NAME).is_file() and (
        root / "comfy" / "model_management.py"
    ).is_file():
        return root.resolve()
    return None


@dataclass(frozen=True)
class ComfyModules:
    """The ComfyUI modules tests commonly need."""

    root: Path
    cli_args: ModuleType
    model_management: ModuleType
    sd: ModuleType
    model_base: ModuleType
    model_patcher: ModuleType
    patcher_extension: ModuleType
    samplers: ModuleType
    supported_models: ModuleType
    wan_model: ModuleType
    attention: ModuleType
    flux_math: ModuleType
    ops: ModuleType


def _configure_cli_args(cli_args: ModuleType) -> None:
    """Set the ComfyUI command-line options used for deterministic CPU tests."""
    args = cli_args.args
    args.cpu = True
    # SDPA: the attention implementation ComfyUI picks on NVIDIA GPUs; on CPU
    # it would otherwise fall back to the chunked sub-quadratic attention.
    args.use_pytorch_cross_attention = True


def _check_cpu_mode(model_management: ModuleType) -> None:
    """Fail loudly if comfy.model_management was imported without CPU mode."""
    if model_management.cpu_state != model_management.CPUState.CPU:
        raise RuntimeError(
            "comfy.model_management was imported before import_comfyui() could set "
            "args.cpu; import ComfyUI only through tests/comfy_support.py"
        )


def import_comfyui() -> ComfyModules:
    """Put the provisioned ComfyUI on ``sys.path`` and import it in CPU mode.

    Raises:
        RuntimeError: ComfyUI is not provisioned, or was already imported
            without CPU mode.
        ImportError: a ComfyUI dependency is missing.
    """
    root = comfyui_dir()
    if root is None:
        raise RuntimeError(SKIP_REASON)
    if str(root) not in sys.path:
        sys.path.append(str(root))  # lowest priority: never shadow project modules
    cli_args = importlib.import_module("comfy.cli_args")
    if "comfy.model_management" not in sys.modules:
        _configure_cli_args(cli_args)
    model_management = importlib.import_module("comfy.model_management")
    _check_cpu_mode(model_management)
    names = {
        "sd": "comfy.sd",
        "model_base": "comfy.model_base",
        "model_patcher": "comfy.model_patcher",
        "patcher_extension": "comfy.patcher_extension",
        "samplers": "comfy.samplers",
        "supported_models": "comfy.supported_models",
        "wan_model": "comfy.ldm.wan.model",
        "attention": "comfy.ldm.modules.attention",
        "flux_math": "comfy.ldm.flux.math",
        "ops": "comfy.ops",
    }
    modules = {key: importlib.import_module(name) for key, name in names.items()}
    return ComfyModules(
        root=root, cli_args=cli_args, model_management=model_management, **modules
    )


def _must_require() -> bool:
    """Tell whether a missing ComfyUI must fail instead of skip."""
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in {"1", "true", "yes"}


requires_comfyui = pytest.mark.skipif(
    comfyui_dir() is None and not _must_require(), reason=SKIP_REASON
)
"""Marker: skip the test when the real ComfyUI is not provisioned."""


def comfy_or_skip() -> ComfyModules:
    """Return :func:`import_comfyui` or skip the calling test with a clear reason.

    Fails instead of skipping when ``REHYAT_REQUIRE_COMFYUI=1``.
    """
    if comfyui_dir() is None:
        if _must_require():
            pytest.fail(f"{ENV_REQUIRE} is set but {SKIP_REASON}")
        pytest.skip(SKIP_REASON)
    try:
        return import_comfyui()
    except ModuleNotFoundError as exc:
        message = (
            f"ComfyUI dependency {exc.name!r} missing: "
            "run python scripts/provision_comfyui.py (without --skip-install)"
        )
        if _must_require():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def comfy() -> ComfyModules:
    """Fixture: the imported real ComfyUI (skips clearly when absent).

    Import it into a conftest.py to share it; tests can also call
    :func:`comfy_or_skip` from their own fixture.
    """
    return comfy_or_skip()


def wan_num_heads(dim: int) -> int:
    """Return the head count ComfyUI's Wan2.1 detection derives from ``dim``."""
    if dim <= 0 or dim % WAN_HEAD_DIM:
        raise ValueError(
            f"dim must be a positive multiple of {WAN_HEAD_DIM}, got {dim}"
        )
    return dim // WAN_HEAD_DIM


def tiny_wan_config(
    dim: int = 256,
    ffn_dim: int = 512,
    num_layers: int = 2,
    in_dim: int = 16,
    out_dim: int = 16,
    text_dim: int = WAN_TEXT_DIM,
    freq_dim: int = WAN_FREQ_DIM,
) -> dict[str, Any]:
    """Return the WanModel (T2V) config matching :func:`tiny_wan_state_dict`."""
    return {
        "model_type": "t2v",
        "patch_size": WAN_PATCH_SIZE,
        "dim": dim,
        "ffn_dim": ffn_dim,
        "num_heads": wan_num_heads(dim),
        "num_layers": num_layers,
        "in_dim": in_dim,
        "out_dim": out_dim,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
    }


class _Init:
    """Seeded random tensor factory with small, non-degenerate scales."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(
        self, shape: tuple[int, ...], std: float, mean: float = 0.0
    ) -> torch.Tensor:
        """Return ``mean + std * N(0, 1)`` of ``shape`` (float32)."""
        noise = torch.randn(shape, generator=self.generator, dtype=torch.float32)
        return noise * std + mean

    def linear(
        self, sd: dict[str, torch.Tensor], name: str, out_f: int, in_f: int
    ) -> None:
        """Add ``name.weight``/``name.bias`` of a Linear(in_f, out_f) to ``sd``."""
        sd[f"{name}.weight"] = self.normal((out_f, in_f), 1.0 / math.sqrt(in_f))
        sd[f"{name}.bias"] = self.normal((out_f,), 0.02)

    def norm_weight(self, dim: int) -> torch.Tensor:
        """Return an affine norm weight close to one."""
        return self.normal((dim,), 0.1, mean=1.0)

    def modulation(self, rows: int, dim: int) -> torch.Tensor:
        """Return a modulation parameter of shape (1, rows, dim)."""
        return self.normal((1, rows, dim), 1.0 / math.sqrt(dim))


def _attention_params(
    init: _Init, sd: dict[str, torch.Tensor], prefix: str, dim: int
) -> None:
    """Add q/k/v/o projections and q/k RMSNorm weights of one attention."""
    for proj in ("q", "k", "v", "o"):
        init.linear(sd, f"{prefix}.{proj}", dim, dim)
    sd[f"{prefix}.norm_q.weight"] = init.norm_weight(dim)
    sd[f"{prefix}.norm_k.weight"] = init.norm_weight(dim)


def _block_params(
    init: _Init, sd: dict[str, torch.Tensor], index: int, dim: int, ffn_dim: int
) -> None:
    """Add the parameters of transformer block ``index``."""
    prefix = f"blocks.{index}"
    sd[f"{prefix}.modulation"] = init.modulation(6, dim)
    _attention_params(init, sd, f"{prefix}.self_attn", dim)
    sd[f"{prefix}.norm3.weight"] = init.norm_weight(dim)
    sd[f"{prefix}.norm3.bias"] = init.normal((dim,), 0.02)
    _attention_params(init, sd, f"{prefix}.cross_attn", dim)
    init.linear(sd, f"{prefix}.ffn.0", ffn_dim, dim)
    init.linear(sd, f"{prefix}.ffn.2", dim, ffn_dim)


def tiny_wan_state_dict(
    dim: int = 256,
    ffn_dim: int = 512,
    num_heads: int | None = None,
    num_layers: int = 2,
    in_dim: int = 16,
    out_dim: int = 16,
    text_dim: int = WAN_TEXT_DIM,
    freq_dim: int = WAN_FREQ_DIM,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Build a random Wan2.1 T2V state dict with the real ComfyUI/original key names.

    Shapes match ``comfy.ldm.wan.model.WanModel`` built with
    :func:`tiny_wan_config`.  No weight shape depends on the head count, which
    ComfyUI derives as ``dim // 128``: ``num_heads`` is only checked against it.
    ComfyUI's loader also fixes ``freq_dim = 256`` and uses WanModel's default
    ``text_dim = 4096``; other values give a state dict it cannot load.

    Weights are float32, drawn from a seeded generator with fan-in scaled
    standard deviations so activations stay O(1) and nothing is trivially zero.
    """
    expected_heads = wan_num_heads(dim)
    if num_heads is not None and num_heads != expected_heads:
        raise ValueError(f"ComfyUI derives num_heads = dim // 128 = {expected_heads}")
    init = _Init(seed)
    patch = math.prod(WAN_PATCH_SIZE)
    sd: dict[str, torch.Tensor] = {
        "patch_embedding.weight": init.normal(
            (dim, in_dim, *WAN_PATCH_SIZE), 1.0 / math.sqrt(in_dim * patch)
        ),
        "patch_embedding.bias": init.normal((dim,), 0.02),
    }
    init.linear(sd, "text_embedding.0", dim, text_dim)
    init.linear(sd, "text_embedding.2", dim, dim)
    init.linear(sd, "time_embedding.0", dim, freq_dim)
    init.linear(sd, "time_embedding.2", dim, dim)
    init.linear(sd, "time_projection.1", dim * 6, dim)
    for index in range(num_layers):
        _block_params(init, sd, index, dim, ffn_dim)
    sd["head.modulation"] = init.modulation(2, dim)
    init.linear(sd, "head.head", out_dim * patch, dim)
    return sd


def load_tiny_wan_comfy(sd: dict[str, torch.Tensor]) -> Any:
    """Load ``sd`` with ``comfy.sd.load_diffusion_model_state_dict``; return the ModelPatcher.

    ComfyUI pops the keys it loads, so a shallow copy is passed and ``sd``
    stays intact.
    """
    modules = import_comfyui()
    patcher = modules.sd.load_diffusion_model_state_dict(dict(sd))
    if patcher is None:
        raise RuntimeError(
            "ComfyUI did not recognise the state dict as a diffusion model"
        )
    return patcher
