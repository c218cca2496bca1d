"""Packaging: metadata in step, the ComfyUI entry guarded, the pack loading in real ComfyUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_support import comfy_or_skip

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parent.parent


def _requirement_names(lines) -> dict[str, str]:
    reqs = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = line.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
            reqs[name] = line.replace(" ", "")
    return reqs


def test_requirements_txt_follows_project_dependencies_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    assert "torch" in declared
    del declared["torch"]
    assert _requirement_names((ROOT / "requirements.txt").read_text().splitlines()) == declared


def test_pyproject_has_comfy_registry_table_and_extras():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName"} <= set(data["tool"]["comfy"])
    extras = data["project"]["optional-dependencies"]
    assert {"test", "diffusers", "text"} <= set(extras)
    assert _requirement_names(extras["text"]).keys() == {"transformers", "sentencepiece"}
    assert all("==" not in spec for spec in extras["diffusers"]), "a tested range, not one pin"


def test_entry_package_imports_outside_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rehyat_pack', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['rehyat_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "print(mod.WEB_DIRECTORY, hasattr(mod, 'comfy_entrypoint'), 'comfy' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env,
                         check=True)
    assert out.stdout.split() == ["./web", "False", "False"]


def test_rehyat_core_never_imports_comfy():
    for path in (ROOT / "rehyat").rglob("*.py"):
        text = path.read_text()
        assert "import comfy" not in text and "from comfy" not in text, path


def test_pack_loads_and_its_nodes_run_in_real_comfyui(tmp_path):
    """The pack loaded by ComfyUI's own loader; the φ journey through the registered node classes."""
    comfy = comfy_or_skip()
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "ComfyUI-ReHyAt").symlink_to(ROOT, target_is_directory=True)
    base = tmp_path / "comfy_base"
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ROOT / "tests" / "scripts" / "load_pack_in_comfyui.py"
    out = subprocess.run(
        [sys.executable, str(script), str(custom_nodes / "ComfyUI-ReHyAt"), str(ROOT / "tests"), str(base)],
        capture_output=True, text=True, cwd=comfy.root, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] and report["node_registered"], out.stderr[-3000:]
    assert set(H3_NODES) <= set(report["node_ids"])
    assert report["rehyat_folder"][0] == str(base / "models" / "rehyat")
    # the deprecated id still loads and runs (saved graphs keep working)
    assert report["inputs"][:2] == ["model", "phi_file"]
    assert report["clone_is_new"]
    assert report["patched_blocks"] == [f"diffusion_model.blocks.{i}.self_attn" for i in (0, 1)]
    assert report["output_finite"] and report["output_shape"] == [1, 16, 5, 8, 8]
    # Save φ → Load φ → Patch Model → KSampler reproduces the run of the model the φ came from
    assert report["phi_saved"] == "rehyat_test_journey_00001_.safetensors"
    assert report["phi_listed"] and report["phi_on_disk"]
    assert "φ loaded: its settings rule" in report["patch_report"]
    assert report["journey_finite"] and report["journey_identical"] and report["journey_differs_from_stock"]


H3_NODES = ("ReHyAtCompare", "ReHyAtLoadConditioning", "ReHyAtLoadPhi", "ReHyAtLoadPhiFromHub",
            "ReHyAtPatchModel", "ReHyAtPatchWan", "ReHyAtSaveConditioning", "ReHyAtSavePhi")
