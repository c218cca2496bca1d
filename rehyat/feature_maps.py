"""Learned feature maps φq / φk of ReHyAt's linear attention.

Each map is a per-head 2-layer MLP — a grouped 1×1 convolution with one group per head, stored as
``(heads, in, out)`` weight tensors and run as a batched matmul — followed by a polynomial
expansion: the MLP output ψ is split into P equal parts and part i is raised to the power i,
``φ(x) = [ψ₁(x)¹, ψ₂(x)², …, ψ_P(x)^P]``.

Positivity guarantee: ψ = softplus(h) + eps with eps ∈ [1e-12, 1], computed in fp32. Softplus
never returns a negative value (its fp32 underflow to 0 is covered by eps), so every feature of
part i is ≥ eps^i ≥ 0 and every feature of the first part is ≥ eps. Hence for any inputs
``φq(q)·φk(k) ≥ (d'/P)·eps² > 0``: eps² ≥ 1e-24 is a normal fp32 number, whatever the higher
powers round to.

Precision: for bf16 / fp16 inputs the two MLP layers run in the input's dtype (the matmul backends
accumulate in fp32); softplus, eps and the powers always run in fp32, and the features are returned
in fp32 (the op casts them for its own low-precision matmuls). fp32 / fp64 inputs run the MLP in the
parameters' dtype, as before. fp16 saturates instead of overflowing: the MLP's layer outputs are
clamped to ±65504, so the features stay finite and positive for any input.

Initialisation: first layer ~ U(±1/√d) (unit-gain for unit-variance queries), second layer
~ U(±1/√hidden), output bias ``init_bias`` (−6 by default: features start near softplus(−6)≈2.5e-3
and vary by ~±30 % with the input). Before training φq(q)·φk(k) is then ≈1e-3 per key — the size of
one softmax weight over a window of about a thousand tokens — so an untrained hybrid stays close to
its local softmax attention with a mild global average on top: a smooth, input-dependent, strictly
positive kernel, never all-zero and never exploding. The parameters are deterministic given the
torch RNG state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FeatureMapConfig, require_int
from .ops.scratch import FEATURES, TEMPORARY, Scratch

LOW_PRECISION_FEATURES = "features.low_precision"  # scratch role: φ's bf16/fp16 MLP output

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class HeadwiseFeatureMap(nn.Module):
    """One feature map φ: ``(B, H, n, head_dim) -> (B, H, n, feature_dim)``, ≥ fp32, positive.

    Args:
        num_heads: H; each head has its own MLP (a grouped 1×1 conv with H groups).
        head_dim: d, the per-head query/key width.
        config: widths, degree and initialisation; defaults from :class:`FeatureMapConfig`.
    """

    def __init__(self, num_heads: int, head_dim: int, config: FeatureMapConfig | None = None):
        super().__init__()
        config = config or FeatureMapConfig()
        require_int("num_heads", num_heads, low=1)
        require_int("head_dim", head_dim, low=1)
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        hidden, out = config.hidden_dim, config.feature_dim
        self.weight1 = nn.Parameter(torch.empty(num_heads, head_dim, hidden))  # (H, d, h)
        self.bias1 = nn.Parameter(torch.empty(num_heads, 1, hidden))  # (H, 1, h)
        self.weight2 = nn.Parameter(torch.empty(num_heads, hidden, out))  # (H, h, d')
        self.bias2 = nn.Parameter(torch.empty(num_heads, 1, out))  # (H, 1, d')
        self.reset_parameters()

    @property
    def feature_dim(self) -> int:
        """d', the width of φ's output."""
        return self.config.feature_dim

    def reset_parameters(self) -> None:
        """Re-initialise as described in the module docstring."""
        bound1 = 1.0 / math.sqrt(self.head_dim)
        bound2 = 1.0 / math.sqrt(self.config.hidden_dim)
        with torch.no_grad():
            self.weight1.uniform_(-bound1, bound1)
            self.bias1.uniform_(-bound1, bound1)
            self.weight2.uniform_(-bound2, bound2)
            self.bias2.fill_(self.config.init_bias)

    accepts_scratch = True  # the ops may pass a :class:`~rehyat.ops.scratch.Scratch` for inference

    def forward(self, x: Tensor, scratch: Scratch | None = None) -> Tensor:
        """Map ``x`` ``(B, H, n, d)`` to features ``(B, H, n, d')``, all > 0, fp32 (fp64 for fp64).

        With autograd off the maths runs in place; given a ``scratch`` the hidden layer lives in its
        :data:`~rehyat.ops.scratch.TEMPORARY` buffer and the features in its
        :data:`~rehyat.ops.scratch.FEATURES` buffer (valid until the next feature-map call with
        the same scratch).
        """
        if x.ndim != 4 or x.shape[1] != self.num_heads or x.shape[3] != self.head_dim:
            raise ValueError(
                f"feature map expects (B, {self.num_heads}, n, {self.head_dim}); "
                f"got {tuple(x.shape)}"
            )
        batch, heads, n, dim = x.shape
        dtype = mlp_dtype(x.dtype, self.weight1.dtype)
        xh = x.to(dtype).transpose(0, 1).reshape(heads, batch * n, dim)  # (H, B·n, d)
        if torch.is_grad_enabled():
            features = self._features(xh)
        else:
            features = self._features_inplace(xh, scratch)
        return features.reshape(heads, batch, n, -1).transpose(0, 1)  # (B, H, n, d')

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The MLP's parameters in ``dtype`` (the parameters themselves when they already are)."""
        return tuple(t.to(dtype) for t in (self.weight1, self.bias1, self.weight2, self.bias2))

    def _features(self, xh: Tensor) -> Tensor:
        """Differentiable path: ``(H, m, d) -> (H, m, d')``."""
        w1, b1, w2, b2 = self._weights(xh.dtype)
        hidden = _saturate(torch.baddbmm(b1, xh, w1))  # (H, m, h)
        hidden = _ACTIVATIONS[self.config.activation](hidden)
        pre = _saturate(torch.baddbmm(b2, hidden, w2))  # (H, m, d')
        psi = F.softplus(pre.to(_at_least_fp32(pre.dtype))) + self.config.eps
        return _polynomial_parts(psi, self.config.degree)

    def _features_inplace(self, xh: Tensor, scratch: Scratch | None) -> Tensor:
        """Inference path: same numbers, every element-wise step in the matmul's output buffer.

        Large fresh allocations cost page faults on CPU, so this path uses two buffers (hidden and
        output) instead of six, taken from ``scratch`` when given.
        """
        heads, m, _ = xh.shape
        w1, b1, w2, b2 = self._weights(xh.dtype)
        hidden = _buffer(scratch, TEMPORARY, (heads, m, self.config.hidden_dim), xh)
        torch.baddbmm(b1, xh, w1, out=hidden)  # (H, m, h)
        hidden = _activation_inplace(self.config.activation, _saturate_(hidden))
        out_dtype = _at_least_fp32(xh.dtype)
        if out_dtype == xh.dtype:
            pre = _buffer(scratch, FEATURES, (heads, m, self.config.feature_dim), xh)
            torch.baddbmm(b2, hidden, w2, out=pre)  # (H, m, d')
        else:  # low-precision MLP output, then fp32 features
            low = _buffer(scratch, LOW_PRECISION_FEATURES, (heads, m, self.config.feature_dim), xh)
            torch.baddbmm(b2, hidden, w2, out=low)  # (H, m, d')
            pre = _buffer(scratch, FEATURES, low.shape, low.new_empty(0, dtype=out_dtype))
            pre.copy_(_saturate_(low))
        torch.ops.aten.softplus.out(pre, 1, 20, out=pre)  # F.softplus (same threshold), in place
        pre.add_(self.config.eps)
        for power, part in enumerate(pre.chunk(self.config.degree, dim=-1), start=1):
            if power > 1:
                part.pow_(power)
        return pre

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, hidden={cfg.hidden_dim}, "
            f"features={cfg.feature_dim}, degree={cfg.degree}, activation={cfg.activation}"
        )


def mlp_dtype(input_dtype: torch.dtype, parameter_dtype: torch.dtype) -> torch.dtype:
    """Dtype of φ's MLP: bf16 / fp16 inputs run in their own dtype, others in the parameters' dtype."""
    return input_dtype if input_dtype in (torch.bfloat16, torch.float16) else parameter_dtype


def _saturate(x: Tensor) -> Tensor:
    """fp16: clamp to ±65504 so an overflow saturates instead of reaching inf (others unchanged)."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max
    return x.clamp(-limit, limit)


def _saturate_(x: Tensor) -> Tensor:
    """In-place :func:`_saturate`."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max
    return x.clamp_(-limit, limit)


def _buffer(scratch: Scratch | None, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    if scratch is None:
        return like.new_empty(shape)
    return scratch.get(name, shape, dtype=like.dtype, device=like.device)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _activation_inplace(name: str, x: Tensor) -> Tensor:
    if name == "relu":
        return x.relu_()
    if name == "silu":
        return F.silu(x, inplace=True)
    return F.gelu(x)


def _polynomial_parts(psi: Tensor, degree: int) -> Tensor:
    """Split the last dim into ``degree`` parts and raise part i (1-based) to the power i."""
    if degree == 1:
        return psi
    parts = psi.chunk(degree, dim=-1)
    return torch.cat([p if i == 0 else p.pow(i + 1) for i, p in enumerate(parts)], dim=-1)


class FeatureMapPair(nn.Module):
    """The φq / φk pair of one converted attention block.

    φk starts as an exact copy of φq, so before training ``φq(q)·φk(k) = φ(q)·φ(k)`` is a symmetric
    positive-semidefinite similarity that grows with the alignment of q and k (positively correlated
    with q·k); distillation then moves the two maps apart.
    """

    def __init__(self, num_heads: int, head_dim: int, config: FeatureMapConfig | None = None):
        super().__init__()
        self.phi_q = HeadwiseFeatureMap(num_heads, head_dim, config)
        self.phi_k = HeadwiseFeatureMap(num_heads, head_dim, config)
        self.phi_k.load_state_dict(self.phi_q.state_dict())

    @property
    def config(self) -> FeatureMapConfig:
        """The shared :class:`FeatureMapConfig`."""
        return self.phi_q.config


def feature_map_parameter_count(num_heads: int, head_dim: int, config: FeatureMapConfig) -> int:
    """Parameters of one φq/φk pair (one converted block), computed from the shapes alone."""
    hidden, out = config.hidden_dim, config.feature_dim
    per_map = num_heads * (head_dim * hidden + hidden + hidden * out + out)
    return 2 * per_map
