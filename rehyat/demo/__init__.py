"""``python -m rehyat demo``: the embedded teacher, its ReHyAt conversion and a long clip side by side."""

from __future__ import annotations

from .pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
