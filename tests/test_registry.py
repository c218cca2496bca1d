"""Comfy Registry readiness: comfy-cli's own validation, its parse of [tool.comfy], and the archive.

comfy-cli runs from the virtual environment of its own that ``scripts/provision_comfyui.py`` creates
next to the provisioned ComfyUI (``.cache/comfy-cli-venv``; or ``$REHYAT_COMFY_CLI_VENV``), so its
dependencies never touch the test environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from comfy_support import REPO_ROOT, comfyui_dir
from server_browser import skip_or_fail

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ENV_VENV = "REHYAT_COMFY_CLI_VENV"
RAW_PREFIX = "https://raw.githubusercontent.com/"


def comfy_cli_python() -> Path:
    """The interpreter of the comfy-cli venv (next to the provisioned ComfyUI, as the script makes it)."""
    comfy = comfyui_dir()
    default = (comfy.parent if comfy is not None else REPO_ROOT / ".cache") / "comfy-cli-venv"
    venv = Path(os.environ.get(ENV_VENV) or default)
    python = venv / "bin" / "python"
    if not python.exists():
        skip_or_fail(f"comfy-cli is not installed in {venv}: run python scripts/provision_comfyui.py")
    return python


def comfy_cli_env(tmp_path: Path) -> dict[str, str]:
    """No telemetry, no prompts, and a private config folder."""
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "DO_NOT_TRACK": "1",
            "COMFY_CLI_NO_TELEMETRY": "1"}


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_comfy_node_validate_passes(tmp_path: Path):
    python = comfy_cli_python()
    result = subprocess.run([str(python), "-m", "comfy_cli", "--skip-prompt", "--no-enable-telemetry", "node",
                             "validate"], cwd=REPO_ROOT, env=comfy_cli_env(tmp_path), capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed successfully" in output, output
    assert "Warning" not in output and "Security warnings" not in output, output


def test_comfy_cli_reads_the_tool_comfy_table(tmp_path: Path):
    """comfy-cli's parser sees every registry field (it drops invalid ones with only a warning)."""
    python = comfy_cli_python()
    script = ("import json; from comfy_cli.registry.config_parser import extract_node_configuration as e; "
              "c = e(); print(json.dumps({'name': c.project.name, 'version': c.project.version, "
              "'license': c.project.license.text, 'publisher': c.tool_comfy.publisher_id, "
              "'display': c.tool_comfy.display_name, 'icon': c.tool_comfy.icon, "
              "'comfyui': c.project.supported_comfyui_version, 'web': c.tool_comfy.web}))")
    result = subprocess.run([str(python), "-c", script], cwd=REPO_ROOT, env=comfy_cli_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stdout, result.stdout
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["name"] == "comfyui-rehyat" and parsed["version"]
    assert parsed["license"] == "MIT"
    assert parsed["publisher"] == "rehyat" and parsed["display"] == "ComfyUI-ReHyAt"
    assert parsed["comfyui"] == ">=0.3.75"
    # tool.comfy.web would make ComfyUI serve web/ a second time (under the project name) next to
    # WEB_DIRECTORY, loading the extension twice.
    assert not parsed["web"]


def test_icon_is_shipped_in_the_repo():
    icon = pyproject()["tool"]["comfy"]["Icon"]
    repository = pyproject()["project"]["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/")
    assert icon.startswith(f"{RAW_PREFIX}{owner_repo}/main/"), icon
    path = REPO_ROOT / icon.removeprefix(f"{RAW_PREFIX}{owner_repo}/main/")
    assert path.is_file(), f"the Icon URL points at {path}, which is not in the repository"
    text = path.read_text()
    assert text.lstrip().startswith("<svg") and 'viewBox="0 0 128 128"' in text


def test_license_is_mit_like_pyproject():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 ComfyUI-ReHyAt developers" in text
    assert pyproject()["project"]["license"] == {"text": "MIT"}


def _publishable_tree(destination: Path) -> Path:
    """A copy of the files git would ship once committed: tracked plus untracked-but-not-ignored."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a commit would hold")
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode()
    for relative in filter(None, listing.split("\0")):
        source = REPO_ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_published_archive_keeps_tests_benchmarks_and_caches_out(tmp_path: Path):
    """comfy-cli's own packer (``comfy node pack``'s zip_files) on the tree a commit would hold."""
    python = comfy_cli_python()
    tree = _publishable_tree(tmp_path / "tree")
    for cache in (".cache/comfyui/nodes.py", "nodes/__pycache__/x.cpython-311.pyc", ".pytest_cache/v/x"):
        (tree / cache).parent.mkdir(parents=True, exist_ok=True)
        (tree / cache).write_text("cache")  # what a user's working tree holds after running the tests
    archive = tmp_path / "node.zip"
    result = subprocess.run([str(python), "-c", f"from comfy_cli.file_utils import zip_files; "
                             f"zip_files({str(archive)!r})"], cwd=tree, env=comfy_cli_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = zipfile.ZipFile(archive).namelist()
    kept_out = {"tests", "benchmarks", ".benchmarks", ".cache", "scripts", ".pytest_cache", ".ci"}
    leaked = [n for n in names if n.split("/")[0] in kept_out
              or n.startswith(("web/tests/", "rehyat/assets/")) or "__pycache__" in n or n.endswith(".pyc")]
    assert leaked == []
    for needed in ("__init__.py", "pyproject.toml", "LICENSE", "README.md", "nodes/__init__.py",
                   "rehyat/__init__.py", "web/rehyat.js", "web/lib/figures.js", "web/icon.svg"):
        assert needed in names, f"{needed} missing from the archive"
