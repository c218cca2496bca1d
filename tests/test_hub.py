"""rehyat.hub against a real huggingface_hub cache laid out by the test (no network, ever).

The cache is what huggingface_hub itself writes: ``models--<owner>--<name>/blobs/<hash>``,
``refs/<branch>`` holding the commit hash, ``snapshots/<commit>/<file>`` → ``../../blobs/<hash>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub", reason="the Hub download needs huggingface_hub (test extra)")

from nodes_support import lay_out_cache  # noqa: E402

from rehyat.hub import check_hub_request, fetch_phi_file, hub_cache_dir, hub_offline  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # lay_out_cache's default commit
REPO = "rehyat-test/tiny-phi"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused at once, nothing leaves the machine


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """HF_HOME in tmp, offline; returns the cache folder (HF_HOME/hub)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf_home" / "hub"


def test_environment_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is expected


def test_offline_cached_file_is_linked_into_the_models_folder(hub_env, tmp_path):
    lay_out_cache(hub_env, REPO, {"phi.safetensors": b"phi-bytes", "sub/other.safetensors": b"other"})
    dest = tmp_path / "models" / "rehyat"
    dest.mkdir(parents=True)
    fetched = fetch_phi_file(REPO, "phi.safetensors", "main", dest)
    assert fetched.commit == COMMIT
    assert fetched.relative == "hub/rehyat-test--tiny-phi/0123456789ab/phi.safetensors"
    assert fetched.path == dest / fetched.relative and fetched.path.read_bytes() == b"phi-bytes"
    assert fetched.cache_path.is_relative_to(hub_env)
    again = fetch_phi_file(REPO, "phi.safetensors", COMMIT, dest)  # by commit hash: the same file
    assert again.path == fetched.path
    nested = fetch_phi_file(REPO, "sub/other.safetensors", "main", dest)
    assert nested.path.read_bytes() == b"other"
    assert nested.relative.endswith("0123456789ab/sub/other.safetensors")


def test_revisions_land_in_their_own_commit_folders(hub_env, tmp_path):
    lay_out_cache(hub_env, REPO, {"phi.safetensors": b"v1"})
    second = "fedcba9876543210fedcba9876543210fedcba98"
    lay_out_cache(hub_env, REPO, {"phi.safetensors": b"v2"}, commit=second, branch="v2")
    first = fetch_phi_file(REPO, "phi.safetensors", "main", tmp_path)
    other = fetch_phi_file(REPO, "phi.safetensors", "v2", tmp_path)
    assert first.path != other.path
    assert first.path.read_bytes() == b"v1" and other.path.read_bytes() == b"v2"


def test_offline_at_huggingface_hub_import_counts_too(hub_env, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # ComfyUI started offline
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        fetch_phi_file(REPO, "phi.safetensors", "main", tmp_path)


def test_offline_and_not_cached_is_a_clear_error(hub_env, tmp_path):
    lay_out_cache(hub_env, REPO, {"phi.safetensors": b"x"})
    for repo, name, revision in ((REPO, "missing.safetensors", "main"),
                                 ("someone/else", "phi.safetensors", "main"),
                                 (REPO, "phi.safetensors", "no-such-branch")):
        with pytest.raises(ValueError, match="not in the local Hugging Face cache .*HF_HUB_OFFLINE is set"):
            fetch_phi_file(repo, name, revision, tmp_path)
    assert not (tmp_path / "hub").exists()


def test_unreachable_hub_falls_back_to_the_cache_or_says_so(hub_env, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if started online
    lay_out_cache(hub_env, REPO, {"phi.safetensors": b"cached"})
    for revision in (COMMIT, "main"):  # no answer from the Hub: the cache alone is used, at once
        fetched = fetch_phi_file(REPO, "phi.safetensors", revision, tmp_path, timeout=2, endpoint=UNREACHABLE)
        assert fetched.path.read_bytes() == b"cached"
    message = r"not in the local Hugging Face cache .*could not be reached \(Connect"
    with pytest.raises(ValueError, match=message):
        fetch_phi_file(REPO, "absent.safetensors", "main", tmp_path, timeout=2, endpoint=UNREACHABLE)


@pytest.mark.parametrize(("repo_id", "filename", "revision", "pattern"), [
    ("noslash", "a.safetensors", "main", "repo_id must look like 'owner/name'"),
    ("a/b/c", "a.safetensors", "main", "repo_id"),
    ("../x", "a.safetensors", "main", "repo_id"),
    ("a/b", "model.ckpt", "main", "filename must be a .safetensors φ file"),
    ("a/b", "x.bin", "main", "filename"),
    ("a/b", "../a.safetensors", "main", "filename '../a.safetensors' must not contain '..'"),
    ("a/b", "/abs.safetensors", "main", "not absolute"),
    ("a/b", "a.safetensors", " ", "revision must be a branch, tag or commit hash"),
])
def test_bad_requests_are_refused_before_any_lookup(repo_id, filename, revision, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_hub_request(repo_id, filename, revision)


def test_bad_timeout(hub_env, tmp_path):
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds in \(0, 600\]"):
        fetch_phi_file(REPO, "phi.safetensors", "main", tmp_path, timeout=0)


def test_importing_the_module_does_not_import_huggingface_hub():
    code = "import sys, rehyat.hub; print('huggingface_hub' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("offline", ["0", None])
def test_fetch_in_a_fresh_process_without_hf_hub_offline(tmp_path, offline):
    """A fresh interpreter that never imported ``huggingface_hub.constants`` itself (as ComfyUI's)."""
    home = tmp_path / "hf_home"
    lay_out_cache(home / "hub", REPO, {"phi.safetensors": b"cached"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env["HF_HOME"] = str(home)
    if offline is not None:
        env["HF_HUB_OFFLINE"] = offline
    code = (
        "import sys; from rehyat.hub import fetch_phi_file; "
        f"f = fetch_phi_file({REPO!r}, 'phi.safetensors', 'main', sys.argv[1], timeout=2, "
        f"endpoint={UNREACHABLE!r}); print(f.path.read_bytes().decode())"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models")], capture_output=True,
                         text=True, cwd=root, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cached"
