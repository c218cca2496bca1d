"""Helpers for tests of the pack's nodes in a real ComfyUI (in-process, as part of the pack package).

The node modules import the core relatively (``from ..rehyat …``), so they are imported the way
ComfyUI imports a custom node: the repository root as a package (here named :data:`PACK`), its
``nodes`` sub-package inside it. Its core is then ``<PACK>.rehyat`` — a separate module tree from
the top-level ``rehyat`` other tests import, so node tests use :func:`pack_module` for core types.

ComfyUI's real ``folder_paths`` is used, with the pack's two folders pointed at a temporary
directory by :func:`pack_folders` so tests never write into the provisioned ComfyUI.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from comfy_support import comfy_or_skip

ROOT = Path(__file__).resolve().parent.parent
PACK = "comfyui_rehyat_under_test"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def import_pack() -> ModuleType:
    """Import the repository as the package :data:`PACK` (in real ComfyUI; skips when absent)."""
    comfy_or_skip()
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACK]
            raise
    return sys.modules[PACK]


def pack_module(name: str) -> ModuleType:
    """A module of the pack imported as part of it, e.g. ``pack_module("nodes.phi")``."""
    import_pack()
    return importlib.import_module(f"{PACK}.{name}")


def node_class(node_id: str) -> type:
    """The pack's node class with this id (as the pack's extension lists it)."""
    nodes = pack_module("nodes")
    for cls in nodes.node_classes():
        if cls.define_schema().node_id == node_id:
            return cls
    raise KeyError(node_id)


def run_node(node_id: str, **inputs):
    """Run a node's ``execute`` the way ComfyUI's V3 executor does; return its outputs tuple."""
    cls = node_class(node_id)
    out = cls.execute(**inputs)
    return out.result


@dataclass(frozen=True)
class PackFolders:
    """The temporary folders the pack's ComfyUI folders point at during a test."""

    phi: Path
    conditioning: Path


@pytest.fixture(name="pack_folders")
def pack_folders_fixture(tmp_path, monkeypatch) -> PackFolders:
    """Fixture ``pack_folders``: ComfyUI's ``rehyat`` / ``rehyat_conditioning`` folders in ``tmp_path``.

    Import it into a test module as ``pack_folders_fixture`` (pytest finds it by its name).
    """
    import_pack()
    import folder_paths

    phi, cond = tmp_path / "models" / "rehyat", tmp_path / "output" / "rehyat_conditioning"
    phi.mkdir(parents=True)
    cond.mkdir(parents=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "rehyat", ([str(phi)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "rehyat_conditioning",
                        ([str(cond)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield PackFolders(phi, cond)
    folder_paths.filename_list_cache.clear()


def seeded(shape, seed: int) -> torch.Tensor:
    """``torch.randn(shape)`` from its own generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def randomize_phi(hybrid, seed: int, scale: float = 0.2) -> None:
    """Give φ modules non-trivial random weights (so a φ file's content visibly matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def lay_out_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = HUB_COMMIT,
                  branch: str = "main") -> Path:
    """A huggingface_hub cache entry for ``repo_id`` at ``commit`` (``branch`` points at it)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    for name, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo
