"""Fetch φ files from the Hugging Face Hub (through ``huggingface_hub`` and its local cache).

Nothing here runs at import time, and ``huggingface_hub`` is imported only when a download is
asked for. The cache location and offline mode are read from the environment *at call time*, so a
setting made after start-up is honoured:

* cache: ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` — huggingface_hub's order;
* offline: ``HF_HUB_OFFLINE`` truthy → only the cache is used; a file not cached is a clear error.

A file is first put into the shared Hugging Face cache (so other tools and later runs reuse it),
then hard-linked (or copied, atomically) to ``<dest_folder>/hub/<owner>--<name>/<commit>/<file>``:
the commit hash in the path keeps files of different revisions apart and never overwrites one.
Network waits are bounded: one request of at most ``timeout`` seconds asks the Hub about the file
(no answer: the cache alone is used, so a dead network fails or falls back at once instead of
going through huggingface_hub's retries), and huggingface_hub's ``HF_HUB_DOWNLOAD_TIMEOUT``
(default 10 s) bounds each read of the download itself.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .file_names import check_relative_name

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for the Hub's answer about a file before falling back to the cache / failing."""

_TRUE = {"1", "on", "yes", "true"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFile:
    """A φ file fetched from the Hub.

    Attributes:
        path: the copy (or hard link) in the destination folder.
        cache_path: the file in the Hugging Face cache.
        relative: ``path`` relative to the destination folder (what a file list shows).
        commit: the commit hash the file came from.
    """

    path: Path
    cache_path: Path
    relative: str
    commit: str


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, resolved from the environment now (huggingface_hub's order)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def check_hub_request(repo_id: str, filename: str, revision: str) -> None:
    """Raise a ``ValueError`` naming the parameter unless the request is a φ file of a model repo."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id.strip()) or ".." in repo_id:
        raise ValueError(
            f"repo_id must look like 'owner/name' (letters, digits, '.', '_', '-'); got {repo_id!r}"
        )
    check_relative_name(filename, "filename")
    if not filename.lower().endswith(".safetensors"):
        raise ValueError(
            f"filename must be a .safetensors φ file (nothing else is downloaded); got {filename!r}"
        )
    if not isinstance(revision, str) or not revision.strip():
        raise ValueError(f"revision must be a branch, tag or commit hash; got {revision!r}")


def fetch_phi_file(repo_id: str, filename: str, revision: str, dest_folder: str | os.PathLike[str], *,
                   timeout: float = DEFAULT_TIMEOUT, offline: bool | None = None,
                   endpoint: str | None = None) -> HubFile:
    """Get ``filename`` of ``repo_id`` at ``revision`` into the cache and ``dest_folder`` (see module doc).

    Args:
        repo_id: ``owner/name`` of a model repository.
        filename: path of the ``.safetensors`` φ file inside the repository.
        revision: branch, tag or commit hash.
        dest_folder: where the file is linked / copied to (ComfyUI's ``models/rehyat``).
        timeout: seconds to wait for the Hub's metadata answer.
        offline: use only the cache; None: ``HF_HUB_OFFLINE`` as set now or when huggingface_hub
            was imported.
        endpoint: the Hub's URL (None: huggingface_hub's default / ``HF_ENDPOINT``).

    Raises:
        ValueError: for a bad request, or a file that cannot be had (not cached while offline, no
            network, unknown repository / revision / file, gated repository) — the message says
            which and what to do.
        ImportError: when ``huggingface_hub`` is not installed.
    """
    check_hub_request(repo_id, filename, revision)
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 600):
        raise ValueError(f"timeout must be a number of seconds in (0, 600]; got {timeout!r}")
    repo_id, revision = repo_id.strip(), revision.strip()
    try:
        import huggingface_hub
        from huggingface_hub import constants as hub_constants  # a submodule: not an attribute until imported
        from huggingface_hub import errors
    except ImportError as err:
        raise ImportError(
            "downloading φ from the Hub needs huggingface_hub: pip install huggingface_hub"
        ) from err
    if offline is None:  # now, or when huggingface_hub was imported (it then refuses the network itself)
        offline = hub_offline() or bool(getattr(hub_constants, "HF_HUB_OFFLINE", False))

    cache = hub_cache_dir()
    where = f"{filename!r} of {repo_id!r} at revision {revision!r}"
    unreachable = (None if offline
                   else _unreachable(huggingface_hub, repo_id, filename, revision, timeout, endpoint))
    try:
        cached = huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, repo_type="model", cache_dir=cache,
            etag_timeout=timeout, local_files_only=offline or unreachable is not None, endpoint=endpoint)
    except errors.GatedRepoError:
        raise ValueError(f"{repo_id!r} is gated: accept its terms on huggingface.co and log in "
                         "(huggingface-cli login) before downloading") from None
    except errors.RepositoryNotFoundError:
        raise ValueError(f"repo_id {repo_id!r}: no such model repository (or it is private)") from None
    except errors.RevisionNotFoundError:
        raise ValueError(f"revision {revision!r} does not exist in {repo_id!r}") from None
    except errors.LocalEntryNotFoundError:
        reason = ("downloads are off (HF_HUB_OFFLINE is set)" if offline
                  else f"the Hub could not be reached ({unreachable or 'no answer'})")
        raise ValueError(
            f"{where} is not in the local Hugging Face cache ({cache}) and {reason}: download it once "
            "with network access, or put the file into models/rehyat and use 'ReHyAt Load φ'"
        ) from None
    except errors.EntryNotFoundError:
        raise ValueError(
            f"filename {filename!r} does not exist in {repo_id!r} at revision {revision!r}"
        ) from None
    cached = Path(cached)
    commit = _commit_of(cached, revision)
    owner, name = repo_id.split("/")
    relative = Path("hub", f"{owner}--{name}", commit[:12], *Path(filename).parts)
    dest = Path(dest_folder) / relative
    if not dest.is_file():
        _link_or_copy(cached, dest)
    return HubFile(dest, cached, relative.as_posix(), commit)


def _unreachable(hub: Any, repo_id: str, filename: str, revision: str, timeout: float,
                 endpoint: str | None) -> str | None:
    """None if the Hub answers one request about the file within ``timeout`` (any HTTP status), else why not.

    One HEAD request, no retries: huggingface_hub itself retries with back-off (and a 60 s timeout)
    when nothing is cached, which could keep the node waiting for minutes on a dead network. When
    the Hub does not answer, the download runs on the cache alone.
    """
    from huggingface_hub import errors

    url = hub.hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        hub.get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
    except errors.HfHubHTTPError:
        return None  # the Hub answered (e.g. 401 / 404): hf_hub_download reports it precisely
    except Exception as err:  # any failure to get an answer means: unreachable
        return f"{type(err).__name__}: {err}"[:200]
    return None


def _commit_of(cached: Path, revision: str) -> str:
    """The commit hash of a file in the cache (its ``snapshots/<commit>/`` folder)."""
    for parent in cached.parents:
        if parent.parent.name == "snapshots" and _COMMIT.match(parent.name):
            return parent.name
    return re.sub(r"[^A-Za-z0-9._-]", "_", revision)  # not a standard cache layout: name by revision


def _link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (same file system) or copy it atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = source.resolve()  # the cache's snapshot entry is a symlink to a blob
    try:
        os.link(real, dest)
        return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(real, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
