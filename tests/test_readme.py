"""The README a new user reads: no unfinished placeholders, the two fresh-machine commands intact."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_has_no_placeholder_tokens():
    """A bare ALL_CAPS token (a section placeholder such as ``SOME_SECTION``) never ships."""
    text = README.read_text(encoding="utf-8")
    placeholders = re.findall(r"\b[A-Z]+_[A-Z_]{3,}\b", text)
    # environment variables and ComfyUI socket types are real names, not placeholders
    real_prefixes = ("REHYAT_", "HF_", "CUDA_", "PYTORCH_")
    unexpected = sorted({t for t in placeholders if not t.startswith(real_prefixes)})
    assert not unexpected, f"README.md holds placeholder-like tokens: {unexpected}"
    assert "TODO" not in text and "TBD" not in text


def test_readme_states_both_fresh_machine_commands():
    text = README.read_text(encoding="utf-8")
    assert "pip install torch==2.13.0 -e . && python -m rehyat demo" in text
    tests = (
        'pip install torch==2.13.0 -e ".[test,diffusers]" && python scripts/provision_comfyui.py'
        " && python -m pytest"
    )
    assert tests in text
