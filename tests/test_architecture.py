"""The import rules of docs/architecture.md, checked on the source (every import, also late ones)."""

from __future__ import annotations

import ast
from pathlib import Path

from comfy_support import REPO_ROOT

# docs/architecture.md, "Layers": a unit may import its own layer's unit and any lower layer's.
LAYERS: list[tuple[str, set[str]]] = [
    ("config", {"config", "file_names"}),
    ("foundation", {"video_latent", "finite", "atomic", "video"}),
    ("ops", {"ops"}),
    ("maths", {"feature_maps", "flops", "metrics", "keymap"}),
    ("attention", {"hybrid"}),
    ("around one block", {"baselines", "recurrent_dit", "weights", "conditioning_io"}),
    ("models and loops", {"models", "streaming", "training", "hub"}),
    ("integrations", {"integrations"}),
    ("tools", {"profiling", "teacher"}),
    ("students of the teacher", {"student"}),
    ("tools on tools", {"planning", "demo", "fidelity"}),
    ("checks", {"gpu_check"}),
    ("commands", {"commands"}),
    ("cli", {"cli"}),
    ("entry point", {"__main__"}),
]
LATE_EXCEPTIONS = {
    ("hybrid", "baselines"),  # build_attention resolves a fidelity-baseline config to its module
    ("config", "baselines"),  # HybridAttentionConfig.from_dict reads a baseline's serialised config
}
"""Imports that go up a layer, each inside a function and named in docs/architecture.md."""
ROOT_UNIT = "__init__"  # ``from .. import __version__``: package metadata, allowed everywhere
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "rehyat":
        return parts[0]
    if len(parts) == 1 or parts[1] in ("__init__", "__version__"):
        return ROOT_UNIT
    return parts[1]


def _imports(path: Path, package: list[str]) -> list[tuple[str, bool]]:
    """(imported module, is_late) for every rehyat import of the file at ``path`` in ``package``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    late_nodes = {
        id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(n, id(node) in late_nodes) for n in names if n.startswith("rehyat")]
    return found


def _package_of(path: Path) -> list[str]:
    """The package a file's relative imports start from (its folder, as dotted parts)."""
    return list(path.relative_to(REPO_ROOT).parent.parts)


def _rehyat_imports():
    for path in sorted((REPO_ROOT / "rehyat").rglob("*.py")):
        importer = _unit(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
        for module, late in _imports(path, _package_of(path)):
            yield path, importer, _unit(module), late


def test_every_rehyat_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in (REPO_ROOT / "rehyat").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units - set(RANK) == set(), "add the new module to docs/architecture.md and LAYERS"


def test_imports_only_go_down_the_layers():
    bad = []
    for path, importer, imported, late in _rehyat_imports():
        if imported in (importer, ROOT_UNIT) or importer == ROOT_UNIT:
            continue
        if RANK[imported] < RANK[importer]:
            continue
        if late and (importer, imported) in LATE_EXCEPTIONS:
            continue
        bad.append(f"{path.relative_to(REPO_ROOT)}: {importer} imports {imported}{' (late)' if late else ''}")
    assert bad == []


def test_the_late_exceptions_are_still_needed():
    seen = {(i, m) for _, i, m, late in _rehyat_imports() if late}
    assert LATE_EXCEPTIONS <= seen, "an exception is gone: drop it here and in docs/architecture.md"


def test_library_never_imports_comfyui_or_the_fronts():
    for path in (REPO_ROOT / "rehyat").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                roots = {n.split(".")[0] for n in names if not getattr(node, "level", 0)}
                assert not roots & {"comfy", "comfy_api", "folder_paths", "nodes"}, path


def test_nodes_use_the_library_not_the_command_line():
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        for module, _ in _imports(path, ["nodes"]):
            assert _unit(module) not in {"commands", "cli", "__main__"}, f"{path.name} imports {module}"
