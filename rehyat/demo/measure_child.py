"""Child process of the demo's time/memory sweep (``python -m rehyat.demo.measure_child``).

Reads a JSON request on stdin — ``{"teacher_dir", "phi", "lengths", "threads", "prompt"}`` — and
prints one JSON line: for each length (ascending) and model (teacher softmax, ReHyAt recurrent),
the seconds and working memory of one denoising-step model evaluation (after a warm-up call).
Started by :func:`rehyat.demo.memory.measure_lengths_in_child` with glibc's mmap threshold pinned,
so the resident-set high-water mark follows the tensors.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from ..models.wan_rehyat import forward_recurrent, load_phi
from ..teacher.model import load_teacher
from .memory import measure_call


def main() -> int:
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request["threads"]))
    teacher = load_teacher(request["teacher_dir"])
    student = copy.deepcopy(teacher)
    load_phi(student.dit, request["phi"])
    tokens_per_frame = teacher.config.tokens_per_frame
    rows = []
    with torch.no_grad():
        context = teacher.encode([request["prompt"]])
        t = torch.tensor([500.0])
        for frames in sorted(request["lengths"]):
            x = teacher.initial_noise(frames, seed=0)
            for name, fn in (
                ("teacher", lambda x=x: teacher.dit(x, t, context)),
                ("rehyat", lambda x=x: forward_recurrent(student.dit, x, t, context)),
            ):
                fn()  # warm-up
                _, seconds, memory = measure_call(fn)
                rows.append(
                    {
                        "model": name,
                        "frames": frames,
                        "tokens": frames * tokens_per_frame,
                        "seconds": seconds,
                        "working_memory_mib": memory,
                    }
                )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
