"""ReHyAt Load φ from Hub in real ComfyUI, fully offline: a real huggingface_hub cache laid out by the
test (HF_HOME in a temp dir, HF_HUB_OFFLINE=1) holding a φ file made by the Save φ node."""

from __future__ import annotations

import pytest
import torch
from comfy_support import load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import (  # noqa: F401
    HUB_COMMIT,
    lay_out_cache,
    node_class,
    pack_folders_fixture,
    pack_module,
    randomize_phi,
    run_node,
)

pytestmark = requires_comfyui
WIDGETS = dict(num_blocks=2, placement="last", chunk_frames=2, overlap_frames=1, causal=True,
               forward_mode="parallel")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf_home" / "hub"


def test_schema_and_no_download_at_import():
    schema = node_class("ReHyAtLoadPhiFromHub").define_schema()
    assert schema.category == "ReHyAt/model" and all(i.tooltip for i in schema.inputs)
    assert [i.id for i in schema.inputs] == ["repo_id", "filename", "revision"]
    assert [o.io_type for o in schema.outputs] == ["REHYAT_PHI", "STRING"]


def test_hub_phi_from_the_offline_cache_patches_the_model(pack_folders, hub_cache):
    model = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))
    clone, _ = run_node("ReHyAtPatchModel", model=model, **WIDGETS)
    randomize_phi(pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).hybrid, 1)
    (saved,) = run_node("ReHyAtSavePhi", model=clone, filename_prefix="made")
    content = (pack_folders.phi / saved).read_bytes()
    (pack_folders.phi / saved).unlink()
    lay_out_cache(hub_cache, "rehyat-test/tiny-phi", {"rehyat_test_phi.safetensors": content})

    phi, info = run_node("ReHyAtLoadPhiFromHub", repo_id="rehyat-test/tiny-phi",
                         filename="rehyat_test_phi.safetensors", revision="main")
    assert f"commit {HUB_COMMIT}" in info and "2 of 2 blocks [0, 1]" in info
    relative = f"hub/rehyat-test--tiny-phi/{HUB_COMMIT[:12]}/rehyat_test_phi.safetensors"
    assert (pack_folders.phi / relative).read_bytes() == content
    assert relative in node_class("ReHyAtLoadPhi").define_schema().inputs[0].options
    patched, report = run_node("ReHyAtPatchModel", model=model, phi=phi, **WIDGETS)
    assert "φ loaded" in report
    expected = pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(clone).hybrid
    got = pack_module("rehyat.integrations.comfyui_wan").comfy_patch_info(patched).hybrid
    for block in (0, 1):
        assert torch.equal(got[block].feature_maps.phi_q.weight1, expected[block].feature_maps.phi_q.weight1)


def test_offline_not_cached_and_bad_requests_fail_clearly(pack_folders, hub_cache):
    with pytest.raises(ValueError, match="not in the local Hugging Face cache .*HF_HUB_OFFLINE"):
        run_node("ReHyAtLoadPhiFromHub", repo_id="rehyat-test/absent", filename="phi.safetensors",
                 revision="main")
    with pytest.raises(ValueError, match="filename must be a .safetensors"):
        run_node("ReHyAtLoadPhiFromHub", repo_id="a/b", filename="pytorch_model.bin", revision="main")
    lay_out_cache(hub_cache, "rehyat-test/not-phi", {"x.safetensors": b"not a safetensors file"})
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        run_node("ReHyAtLoadPhiFromHub", repo_id="rehyat-test/not-phi", filename="x.safetensors",
                 revision="main")
