"""Fine-tuning in real processes.

2-rank torchrun (gloo) equals one process with the same global batch; SIGKILL + resume equals a
straight run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from finetune_support import model_fn, synthetic_dataset, tiny_dit, tiny_finetune_config, trained_tensors
from safetensors.torch import load_file

from rehyat.training.dataset import LatentDataset
from rehyat.training.finetune import finetune

SCRIPT = Path(__file__).resolve().parent / "scripts" / "finetune_run.py"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _in_process(dataset: Path, steps: int, batch: int, micro: int) -> dict[str, torch.Tensor]:
    """The same run as the script's, in this process (one rank, no checkpoints)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_dit(0)
        config = tiny_finetune_config(steps, batch, micro)
        result = finetune(model, model_fn(model), LatentDataset.open(dataset), config)
    finally:
        torch.set_num_threads(threads)
    return trained_tensors(result)


def _run(args: list[str], nproc: int = 1, timeout: float = 240, script: Path = SCRIPT) -> None:
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # torchrun picks a free port itself: no race between picking and binding
            f"--nproc_per_node={nproc}",
            str(script),
            *args,
        ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "data"
    synthetic_dataset(folder, count=4)
    return folder


def test_two_process_ddp_equals_one_process(dataset, tmp_path) -> None:
    """Global batch 4: 2 ranks × 2 micro-batches of 1 vs 1 rank × 2 micro-batches of 2."""
    two = tmp_path / "two.safetensors"
    _run([str(dataset), str(two), "--steps", "3", "--batch", "4", "--micro", "1"], nproc=2)
    a, b = _in_process(dataset, 3, 4, 2), load_file(two)
    assert a.keys() == b.keys() and len(a) > 1
    torch.testing.assert_close(b["losses"], a["losses"], atol=1e-6, rtol=1e-6)
    # Weights: float summation order differs (per-rank sums, then the all-reduce); Adam amplifies it
    # on near-zero gradients, so allow a tenth of one step's update (lr 1e-3).
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    assert not torch.equal(a["losses"][:1], a["losses"][-1:])  # it trained


def test_sigkill_then_resume_equals_uninterrupted(dataset, tmp_path) -> None:
    resumed = tmp_path / "resumed.safetensors"
    runs = tmp_path / "runs"
    args = [str(dataset), str(resumed), "--steps", "5", "--run-root", str(runs), "--run-name", "killed"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--step-delay", "0.5"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoints = runs / "killed" / "checkpoints"
    deadline = time.monotonic() + 180
    try:
        while not list(checkpoints.glob("checkpoint-*.safetensors")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not resumed.exists()
    saved = sorted(p.name for p in checkpoints.glob("checkpoint-*.safetensors"))
    assert saved and saved[-1] < "checkpoint-00000005", saved  # killed before the end
    _run(args)  # resumes from the last checkpoint
    a, b = _in_process(dataset, 5, 4, 1), load_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_teardown_waits_for_every_rank_before_leaving_the_group(tmp_path) -> None:
    """No rank destroys the group while another still uses it (the cause of exit-time aborts)."""
    _run([str(tmp_path)], nproc=2, script=SCRIPT.parent / "teardown_order.py", timeout=120)
    assert (tmp_path / "rank1_waited").exists(), sorted(p.name for p in tmp_path.iterdir())
