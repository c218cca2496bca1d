"""The ReHyAt Chunked Sampler in a real ComfyUI server: websocket progress events, decoded frames."""

from __future__ import annotations

from comfy_server import comfy_server_fixture  # noqa: F401  (the session fixture `comfy_server`)
from comfy_support import requires_comfyui

pytestmark = requires_comfyui


def prompt(order: str) -> dict:
    """Tiny Wan → ReHyAt patch (Tc=2, To=1) → chunked sampler with the VAE → SaveImage (API format)."""
    return {
        "1": {"class_type": "UNETLoader",
              "inputs": {"unet_name": "rehyat_test_wan.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "ReHyAtPatchModel",
              "inputs": {"model": ["1", 0], "num_blocks": 2, "placement": "last", "chunk_frames": 2,
                         "overlap_frames": 1, "causal": True, "forward_mode": "parallel"}},
        "3": {"class_type": "ReHyAtLoadConditioning",
              "inputs": {"conditioning_file": "rehyat_test_positive.safetensors"}},
        "4": {"class_type": "ReHyAtLoadConditioning",
              "inputs": {"conditioning_file": "rehyat_test_negative.safetensors"}},
        "5": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": 64, "height": 64, "length": 17, "batch_size": 1}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": "rehyat_test_wan_vae.safetensors"}},
        "7": {"class_type": "ReHyAtChunkedSampler",
              "inputs": {"model": ["2", 0], "seed": 3, "steps": 2, "cfg": 3.0, "sampler_name": "euler",
                         "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0],
                         "latent_image": ["5", 0], "denoise": 1.0, "order": order, "state_device": "auto",
                         "vae": ["6", 0]}},
        "8": {"class_type": "SaveImage",
              "inputs": {"images": ["7", 1], "filename_prefix": "rehyat_test_chunked"}},
    }


def test_chunk_progress_events_and_frames_over_the_websocket(comfy_server):
    info = comfy_server.object_info()["ReHyAtChunkedSampler"]
    assert info["category"] == "ReHyAt/sampling" and info["output"] == ["LATENT", "IMAGE"]
    result = comfy_server.run(prompt("streaming"))
    events = result.events_of("rehyat.chunk_progress")
    assert events and {e["node"] for e in events} == {"7"}
    assert all(e["chunks"] == 3 and e["steps"] == 2 and e["order"] == "streaming" for e in events)
    assert [(e["chunk"], e["step"]) for e in events] == [(c, s) for c in (1, 2, 3) for s in (1, 2, 2)]
    progress = [e for e in result.events_of("progress") if e.get("node") == "7"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6
    assert len(result.outputs["8"]["images"]) == 17  # 5 latent frames → 17 video frames
    swept = comfy_server.run(prompt("sweep"))
    assert {e["order"] for e in swept.events_of("rehyat.chunk_progress")} == {"sweep"}
    assert len(swept.outputs["8"]["images"]) == 17
