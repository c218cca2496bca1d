"""Weights held by another pack's custom ops (ComfyUI-GGUF style), in real ComfyUI.

A pack like ComfyUI-GGUF loads a Wan checkpoint into its own layer classes and keeps each weight as
a tensor subclass holding packed bytes (no ``dequantize()``, a storage shape that is not the
weight's); the layer dequantizes in its forward through its own ``cast_bias_weight``. The test pack
below does the same with per-row int8 (its own code, not GGUF's): a φ distilled on the fp32
checkpoint must attach to the quantized load (fingerprint within the quantization's error), a φ of
another checkpoint must be refused, the raw bytes must never be read, and LoRA patches the pack
hangs on a weight must not change which checkpoint it is.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from comfy_support import import_comfyui, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import node_class, pack_module, randomize_phi, run_node  # noqa: F401
from test_nodes_phi import WIDGETS, denoise
from torch import nn

pytestmark = requires_comfyui


class PackedInt8Tensor(torch.Tensor):
    """Per-row int8 weights stored as raw bytes (1-D uint8), like GGUF's ``GGMLTensor``: reading
    the storage gives bytes; the layer turns it into a weight (``values``) when it runs."""

    @staticmethod
    def __new__(cls, raw: torch.Tensor, **_: Any) -> PackedInt8Tensor:
        return torch.Tensor._make_subclass(cls, raw)

    def __init__(self, raw: torch.Tensor, *, scale: torch.Tensor, logical_shape: tuple[int, ...],
                 patches: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.scale, self.logical_shape, self.patches = scale, tuple(logical_shape), list(patches or [])

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> PackedInt8Tensor:
        w = weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # (out, 1)
        q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
        return cls(q.view(torch.uint8).reshape(-1), scale=scale, logical_shape=tuple(w.shape))

    def _carry(self, new: torch.Tensor) -> torch.Tensor:
        if isinstance(new, PackedInt8Tensor) and new is not self:
            new.scale, new.logical_shape, new.patches = self.scale, self.logical_shape, list(self.patches)
        return new

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._carry(super().to(*args, **kwargs))

    def detach(self) -> torch.Tensor:
        return self._carry(super().detach())

    def values(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        raw = self.as_subclass(torch.Tensor).to(device)
        weight = raw.view(torch.int8).reshape(self.logical_shape).to(dtype) * self.scale.to(device, dtype)
        for delta in self.patches:  # LoRA patches, applied on use (GGUF keeps them on the tensor too)
            weight = weight + delta.to(device, dtype)
        return weight


def packed_ops() -> type:
    """A ComfyUI operations class whose Linear keeps weights packed and dequantizes in forward."""
    comfy = import_comfyui()

    class PackedOps(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs):
                for name in ("weight", "bias"):
                    value = state_dict.get(prefix + name)
                    if value is None:
                        if getattr(self, name, None) is not None:
                            missing_keys.append(prefix + name)
                        continue
                    if name == "weight":
                        value = PackedInt8Tensor.quantize(value)
                    setattr(self, name, nn.Parameter(value, requires_grad=False))

            def cast_bias_weight(self, input=None, dtype=None, device=None, bias_dtype=None):
                if input is not None:
                    dtype, device = dtype or input.dtype, device or input.device
                weight = self.weight.values(dtype, device)
                bias = None if self.bias is None else self.bias.to(device=device, dtype=bias_dtype or dtype)
                return weight, bias

            def forward_comfy_cast_weights(self, input, *args, **kwargs):
                weight, bias = self.cast_bias_weight(input)
                return torch.nn.functional.linear(input, weight, bias)

    return PackedOps


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_wan_state_dict(seed=0)


@pytest.fixture
def packed(tiny_sd):
    comfy = import_comfyui()
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(tiny_sd),
                                                       model_options={"custom_operations": packed_ops()})
    q = patcher.model.diffusion_model.blocks[0].self_attn.q
    assert type(q.weight) is PackedInt8Tensor and q.weight.dim() == 1  # raw bytes, not a (256, 256) weight
    return patcher


def _phi_of(clone):
    weights = pack_module("rehyat.weights")
    info = pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone)
    patching = pack_module("nodes.patching")
    return weights.PhiWeights(info.config, info.blocks, weights.BaseModelInfo(256, 2, 2),
                              patching.model_fingerprint(clone), weights.collect_phi_tensors(info.hybrid))


def trained_phi(model, seed: int = 1):
    clone, _ = run_node("ReHyAtPatchModel", model=model, **WIDGETS)
    randomize_phi(pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).hybrid, seed)
    return clone, _phi_of(clone)


def test_fingerprint_reads_the_layers_weight_not_the_packed_bytes(tiny_sd, packed):
    weights = pack_module("rehyat.weights")
    fingerprint = pack_module("nodes.patching").model_fingerprint
    reference = fingerprint(load_tiny_wan_comfy(tiny_sd))
    quantized = fingerprint(packed)
    assert quantized != reference  # int8 moved the statistics a little ...
    assert weights.fingerprints_match(quantized, reference)  # ... within the tolerance
    other = fingerprint(load_tiny_wan_comfy(tiny_wan_state_dict(seed=5)))
    assert not weights.fingerprints_match(quantized, other)
    # without a layer to read through, the raw storage is refused rather than read
    with pytest.raises(ValueError, match="PackedInt8Tensor.*no dequantize"):
        weights.fingerprint_module(packed.model, "wan", prefix="diffusion_model.", num_layers=2)


def test_phi_made_on_fp32_attaches_to_the_packed_load_and_runs_exactly(tiny_sd, packed):
    fp32 = load_tiny_wan_comfy(tiny_sd)
    _, phi = trained_phi(fp32)
    parallel, report = run_node("ReHyAtPatchModel", model=packed, phi=phi, **WIDGETS)
    assert "φ loaded" in report and len(parallel.object_patches) == 2
    recurrent, _ = run_node("ReHyAtPatchModel", model=packed, phi=phi,
                            **{**WIDGETS, "forward_mode": "recurrent"})
    out_parallel, out_recurrent = denoise(parallel), denoise(recurrent)
    assert torch.isfinite(out_parallel).all()
    torch.testing.assert_close(out_recurrent, out_parallel, rtol=1e-5, atol=1e-5)
    # the packed model computes with its int8 weights: close to, not equal to, the fp32 model
    fp32_patched, _ = run_node("ReHyAtPatchModel", model=fp32, phi=phi, **WIDGETS)
    reference = denoise(fp32_patched)
    assert not torch.equal(out_parallel, reference)
    assert (out_parallel - reference).norm() < 0.05 * reference.norm()


def test_phi_of_another_checkpoint_is_refused_on_the_packed_load(packed):
    _, phi = trained_phi(load_tiny_wan_comfy(tiny_wan_state_dict(seed=5)))
    with pytest.raises(ValueError, match="fingerprint does not match"):
        run_node("ReHyAtPatchModel", model=packed, phi=phi, **WIDGETS)


def test_lora_patches_hung_on_packed_weights_do_not_change_the_checkpoint(packed):
    fingerprint = pack_module("nodes.patching").model_fingerprint
    base = fingerprint(packed)
    weight = packed.model.diffusion_model.blocks[0].self_attn.q.weight
    delta = torch.randn(256, 256, generator=torch.Generator().manual_seed(3)) * 0.5  # a strong LoRA
    before = denoise(packed.clone())
    weight.patches = [delta]
    try:
        assert denoise(packed.clone()).sub(before).abs().max() > 1e-3  # the patch is live in forward ...
        assert fingerprint(packed) == base  # ... but the fingerprint reads the base weight
        assert len(weight.patches) == 1 and weight.patches[0] is delta  # and the patch is put back
    finally:
        weight.patches = []


def test_layer_without_a_cast_path_is_refused_naming_what_to_do():
    layer_weight = pack_module("rehyat.integrations.comfyui_weights").layer_cast_weight
    packed = PackedInt8Tensor.quantize(torch.randn(4, 3))
    message = r"PackedInt8Tensor 'weight' of a Linear.*cast_bias_weight.*Load Diffusion"
    with pytest.raises(ValueError, match=message):
        layer_weight(nn.Linear(3, 4), "weight", packed)

    class WrongShape(nn.Linear):
        def cast_bias_weight(self, input=None, dtype=None, device=None, bias_dtype=None):
            return torch.zeros(2, 2), None

    with pytest.raises(ValueError, match=r"shape \(2, 2\); the layer's is \(4, 3\)"):
        layer_weight(WrongShape(3, 4), "weight", packed)
