"""Child process of the demo's time/memory sweep (``python -m rehyat.demo.measure_child``).

Reads a JSON request on stdin — ``{"teacher_dir", "phi", "lengths", "threads", "prompt", "repeats"}``
— and prints one JSON line: for each length (ascending) and model (teacher softmax, ReHyAt
recurrent), the median seconds and working memory of one denoising-step model evaluation over
``repeats`` runs (after a warm-up call; the two models alternate), with every run's seconds.
Progress lines go to stderr.
Started by :func:`rehyat.demo.memory.measure_lengths_in_child` with glibc's mmap threshold pinned,
so the resident-set high-water mark follows the tensors.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys

import torch

from ..models.wan_rehyat import forward_recurrent, load_phi
from ..teacher.model import load_teacher
from .memory import STATUS, measure_call


def main() -> int:
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request["threads"]))
    repeats = int(request.get("repeats", 1))
    teacher = load_teacher(request["teacher_dir"])
    student = copy.deepcopy(teacher)
    load_phi(student.dit, request["phi"])
    tokens_per_frame = teacher.config.tokens_per_frame
    rows = []
    with torch.no_grad():
        context = teacher.encode([request["prompt"]])
        t = torch.tensor([500.0])
        for frames in sorted(request["lengths"]):
            status(f"{frames} frames: {repeats} timed run{'s' if repeats > 1 else ''} per model")
            x = teacher.initial_noise(frames, seed=0)
            cases = (
                ("teacher", lambda x=x: teacher.dit(x, t, context)),
                ("rehyat", lambda x=x: forward_recurrent(student.dit, x, t, context)),
            )
            for _, fn in cases:
                fn()  # warm-up
            runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _ in cases}
            for _ in range(repeats):  # the models alternate, so drift of the machine hits both alike
                for name, fn in cases:
                    _, seconds, memory = measure_call(fn)
                    runs[name].append((seconds, memory))
            for name, _ in cases:
                seconds = [s for s, _ in runs[name]]
                memory = [m for _, m in runs[name]]
                rows.append(
                    {
                        "model": name,
                        "frames": frames,
                        "tokens": frames * tokens_per_frame,
                        "seconds": statistics.median(seconds),
                        "working_memory_mib": None if None in memory else statistics.median(memory),
                        "repeats": repeats,
                        "seconds_runs": seconds,
                    }
                )
    print(json.dumps(rows))
    return 0


def status(line: str) -> None:
    """A progress line for the parent (which relays lines starting with :data:`STATUS`)."""
    print(STATUS + line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
