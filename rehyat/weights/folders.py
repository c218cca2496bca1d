"""Moved to :mod:`rehyat.file_names`; this import path stays while ``rehyat/demo/options.py`` uses it.

Import from :mod:`rehyat.file_names` (or ``rehyat.weights``) instead; drop this module once nothing
imports it.
"""

from __future__ import annotations

from ..file_names import MAX_NAME_BYTES, check_name_length, check_relative_name, resolve_in_folder

__all__ = ["MAX_NAME_BYTES", "check_name_length", "check_relative_name", "resolve_in_folder"]
