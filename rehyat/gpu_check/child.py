"""Process entry of one gpu-check part: ``python -m rehyat.gpu_check.child PART CONFIG_JSON SECONDS``.

Prints ``{"case": ...}`` per finished case and ``{"skipped": reason}`` when the part stops early
(see :mod:`rehyat.gpu_check.guard`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .config import GpuCheckConfig
from .guard import Deadline


def emit(item: dict[str, Any]) -> None:
    """Print one protocol line and flush (a stopped part keeps what it printed)."""
    print(json.dumps(item), flush=True)


def main(argv: list[str]) -> int:
    """Run the part named in ``argv[0]`` with the config in ``argv[1]`` for ``argv[2]`` seconds."""
    part, config, seconds = argv[0], GpuCheckConfig.from_dict(json.loads(argv[1])), float(argv[2])
    deadline = Deadline(seconds)
    if part == "op_correct":
        from .correctness import run_cases
    elif part == "op_speed":
        from .speed import run_cases
    elif part == "dit":
        from .dit import run_cases
    else:
        raise ValueError(f"part must be one of op_correct, op_speed, dit; got {part!r}")
    skipped = run_cases(config, lambda case: emit({"case": case}), deadline)
    if skipped:
        emit({"skipped": skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
