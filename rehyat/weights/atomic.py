"""Atomic safetensors writes (temporary sibling file, fsync, ``os.replace``).

The implementation is shared with every other atomic write of the package: :mod:`rehyat.atomic`.
"""

from __future__ import annotations

from ..atomic import atomic_save_file

__all__ = ["atomic_save_file"]
