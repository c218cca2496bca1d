"""``python -m rehyat distill`` in real subprocesses: torchrun (2 gloo processes) equals one process,
kill -9 then resume equals an uninterrupted run, prompts through a tiny real umT5, clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from comfy_support import tiny_wan_state_dict
from distill_support import tiny_sentencepiece_model

from rehyat.conditioning_io import save_conditioning

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--width",
    "64",
    "--height",
    "64",
    "--length",
    "21",
    "--steps",
    "3",
    "--lr",
    "1e-2",
    "--chunk-frames",
    "2",
    "--phi-hidden-dim",
    "32",
    "--phi-feature-dim",
    "32",
    "--no-progress",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny Wan checkpoint (diffusion-model keys) and three prompt + one negative conditioning files."""
    folder = tmp_path_factory.mktemp("distill_cli")
    safetensors.torch.save_file(tiny_wan_state_dict(seed=0), str(folder / "wan.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for i in range(3):
        save_conditioning(folder / f"p{i}.safetensors", [[torch.randn(1, 6, 4096, generator=gen), {}]])
    save_conditioning(folder / "neg.safetensors", [[torch.randn(1, 4, 4096, generator=gen), {}]])
    return folder


def base_args(files: Path, runs: Path, name: str) -> list[str]:
    conds = [str(files / f"p{i}.safetensors") for i in range(3)]
    return [
        "--model",
        str(files / "wan.safetensors"),
        "--conditioning",
        *conds,
        "--negative-conditioning",
        str(files / "neg.safetensors"),
        "--runs-dir",
        str(runs),
        "--run-name",
        name,
        *TINY,
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def start(args: list[str], torchrun: int = 0) -> subprocess.Popen:
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(torchrun),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(29400 + os.getpid() % 500),
        ]
    else:
        launcher = [sys.executable]
    return subprocess.Popen(
        [*launcher, "-m", "rehyat", "distill", *args],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return out


def phi(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "phi.safetensors"))


def test_torchrun_two_gloo_processes_equal_one_process_with_the_same_global_batch(files, tmp_path):
    single = start([*base_args(files, tmp_path, "single"), "--iterations", "6", "--batch-size", "2"])
    parallel = start(
        [*base_args(files, tmp_path, "parallel"), "--iterations", "6", "--batch-size", "1"], torchrun=2
    )
    finish(single)
    out = finish(parallel)
    assert "global batch 2, 2 process(es)" in out
    a, b = phi(tmp_path / "single"), phi(tmp_path / "parallel")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4), key  # rounding of batched matmuls
    rep_a = json.loads((tmp_path / "single" / "report.json").read_text())
    rep_b = json.loads((tmp_path / "parallel" / "report.json").read_text())
    assert rep_a["trajectories"] == rep_b["trajectories"] == 4
    for block in ("0", "1"):
        assert rep_b["held_out"]["blocks"][block]["after"]["relative_l2"] == pytest.approx(
            rep_a["held_out"]["blocks"][block]["after"]["relative_l2"], rel=1e-4
        )


def test_kill_9_then_resume_equals_an_uninterrupted_run(files, tmp_path):
    args = ["--iterations", "40", "--checkpoint-every", "4"]
    reference = start([*base_args(files, tmp_path, "reference"), *args])
    victim = start([*base_args(files, tmp_path, "victim"), *args])
    checkpoints = tmp_path / "victim" / "checkpoints"
    deadline = time.monotonic() + 180
    while not (checkpoints.is_dir() and any(p.suffix == ".safetensors" for p in checkpoints.iterdir())):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim" / "phi.safetensors").exists(), "the run finished before the kill"
    killed_at = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("checkpoint-*.safetensors"))
    assert 4 <= killed_at < 40
    finish(start([*base_args(files, tmp_path, "victim"), *args]))
    finish(reference)
    a, b = phi(tmp_path / "reference"), phi(tmp_path / "victim")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_prompts_through_a_tiny_real_umt5_encoder(files, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    encoder_dir = tmp_path / "umt5"
    encoder_dir.mkdir()
    (encoder_dir / "spiece.model").write_bytes(tiny_sentencepiece_model())
    transformers.T5Tokenizer(
        vocab_file=str(encoder_dir / "spiece.model"), extra_ids=0, legacy=False
    ).save_pretrained(encoder_dir)
    config = transformers.UMT5Config(
        vocab_size=40,
        d_model=4096,
        d_kv=8,
        d_ff=16,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(encoder_dir)

    from rehyat.training.text_encoding import encode_prompts, load_umt5

    tokenizer, encoder = load_umt5(encoder_dir)
    features = encode_prompts(tokenizer, encoder, ["a red fox", "waves"], max_tokens=16)
    ids = tokenizer(["a red fox"], return_tensors="pt")["input_ids"]
    direct = encoder(input_ids=ids).last_hidden_state[0]
    assert features[0].shape == (16, 4096)
    assert torch.allclose(features[0][: ids.shape[1]], direct, atol=1e-5)
    assert not features[0][ids.shape[1] :].any()

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox jumps\n\na cat on the beach\nwaves crash on rocks\n", encoding="utf-8")
    args = [
        "--model",
        str(files / "wan.safetensors"),
        "--prompts",
        str(prompts),
        "--text-encoder",
        str(encoder_dir),
        "--negative-prompt",
        "blurry",
        "--runs-dir",
        str(tmp_path),
        "--run-name",
        "from_prompts",
        "--iterations",
        "3",
        *TINY,
    ]
    out = finish(start(args))
    assert "held-out prompts and seeds" in out and (tmp_path / "from_prompts" / "phi.safetensors").is_file()


def run_cli_in_process(args: list[str], capsys) -> tuple[int, str]:
    """``rehyat.cli.main`` in this process (same code path as ``python -m rehyat``, no start-up cost)."""
    from rehyat.cli import main

    try:
        code = main(["distill", *args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--run-name", "../escape"], "--run-name '../escape' must be a plain folder name"),
        (["--length", "5"], "too short to exercise the linear attention"),
        (["--blocks", "0", "7"], r"blocks \[7\] out of range"),
        ("no prompts", "prompts: the prompt list is empty"),
    ],
)
def test_cli_bad_inputs_get_clear_errors(files, tmp_path, capsys, extra, message):
    args = base_args(files, tmp_path, "bad")
    if extra == "no prompts":
        args, extra = [a for a in args if a != "--conditioning" and not a.startswith(str(files / "p"))], []
    code, err = run_cli_in_process([*args, *extra, "--iterations", "1"], capsys)
    assert code == 2 and re.search(message, err), err


def test_cli_refuses_a_run_folder_made_for_other_settings(files, tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _refuse_other_settings(files, tmp_path, capsys)
    finally:
        torch.set_num_threads(before)


def _refuse_other_settings(files, tmp_path, capsys):
    code, err = run_cli_in_process([*base_args(files, tmp_path, "run"), "--iterations", "1"], capsys)
    assert code == 0, err
    code, err = run_cli_in_process(
        [*base_args(files, tmp_path, "run"), "--iterations", "1", "--chunk-frames", "3"], capsys
    )
    assert code == 2 and "written for another model or config" in err, err
    assert "conversion.attention.chunk_frames" in err


def test_collectives_under_torchrun_average_gather_and_broadcast(tmp_path):
    script = ROOT / "tests" / "scripts" / "distill_collectives.py"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(29950 + os.getpid() % 40),
            str(script),
            str(tmp_path),
        ],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    ranks = sorted((json.loads(path.read_text()) for path in tmp_path.glob("rank*.json")),
                   key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world"] == 2 and r["backend"] == "gloo"
        assert r["mean"] == [0.5, 10.0, 1.0] and r["grad"] == [1.5, 1.5] and r["zero_grad"] == [0.0]
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}] and r["broadcast"] == "from rank 0"
    assert ranks[0]["on_main"] == "main ran" and ranks[1]["on_main"] is None
    assert ranks[0]["shard"] == [0, 2, 4] and ranks[1]["shard"] == [1, 3]


def test_a_diffusers_checkpoint_distils_like_its_original_layout(files, tmp_path):
    """The real diffusers class's folder (save_pretrained) and its keymap-converted original-layout file
    give the same teacher, hence the same φ."""
    diffusers = pytest.importorskip("diffusers")
    from rehyat.keymap import diffusers_state_dict_to_wan

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=512,
        num_layers=2,
        cross_attn_norm=True,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(tmp_path / "diffusers_wan")
    wan_sd = diffusers_state_dict_to_wan(model.state_dict())
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in wan_sd.items()}, str(tmp_path / "converted.safetensors")
    )

    def args(model_path: Path, name: str) -> list[str]:
        full = base_args(files, tmp_path, name)
        full[full.index("--model") + 1] = str(model_path)
        return [*full, "--iterations", "3", "--query-chunk-fraction", "0.5"]

    from_diffusers = start(args(tmp_path / "diffusers_wan", "from_diffusers"))
    from_original = start(args(tmp_path / "converted.safetensors", "from_original"))
    finish(from_diffusers)
    finish(from_original)
    a, b = phi(tmp_path / "from_diffusers"), phi(tmp_path / "from_original")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def own_model_copy(files: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """``base_args`` with ``--model`` a private copy (a test that may overwrite it spares the fixture)."""
    model = tmp_path / "inputs" / "wan.safetensors"
    model.parent.mkdir()
    model.write_bytes((files / "wan.safetensors").read_bytes())
    args = base_args(files, tmp_path / "runs", "out")
    args[args.index("--model") + 1] = str(model)
    return args, model


@pytest.mark.parametrize("target", ["model", "link to model", "conditioning", "existing file"])
def test_output_never_overwrites_an_existing_file_or_an_input(files, tmp_path, capsys, target):
    args, model = own_model_copy(files, tmp_path)
    before = model.read_bytes()
    output = {
        "model": model,
        "link to model": tmp_path / "phi_link.safetensors",
        "conditioning": Path(args[args.index("--conditioning") + 1]),
        "existing file": tmp_path / "phi.safetensors",
    }[target]
    if target == "link to model":
        output.symlink_to(model)
    elif target == "existing file":
        output.write_bytes(b"someone's file")
    kept = output.read_bytes()
    code, err = run_cli_in_process([*args, "--iterations", "1", "--output", str(output)], capsys)
    assert code == 2 and "--output" in err and "already exists" in err, err
    assert output.read_bytes() == kept and model.read_bytes() == before
    assert not (tmp_path / "runs" / "out").exists(), "refused before any work"


@pytest.mark.parametrize(
    ("where", "message"),
    [("under a file", "is a file, not a folder"), ("long name", "bytes long")],
)
def test_output_in_an_impossible_place_is_refused_up_front(files, tmp_path, capsys, where, message):
    args, _ = own_model_copy(files, tmp_path)
    (tmp_path / "plain_file").write_bytes(b"x")
    output = {
        "under a file": tmp_path / "plain_file" / "phi.safetensors",
        "long name": tmp_path / ("φ" * 130 + ".safetensors"),
    }[where]
    code, err = run_cli_in_process([*args, "--iterations", "1", "--output", str(output)], capsys)
    assert code == 2 and "--output" in err and message in err, err
    assert not (tmp_path / "runs" / "out").exists()


def test_rerunning_a_finished_run_keeps_its_phi_file_and_writes_a_numbered_one(files, tmp_path, capsys):
    args = base_args(files, tmp_path, "run")
    code, err = run_cli_in_process([*args, "--iterations", "1"], capsys)
    assert code == 0, err
    first = (tmp_path / "run" / "phi.safetensors").read_bytes()
    code, err = run_cli_in_process([*args, "--iterations", "2"], capsys)  # extends the finished run
    assert code == 0, err
    assert (tmp_path / "run" / "phi.safetensors").read_bytes() == first
    extended = safetensors.torch.load_file(str(tmp_path / "run" / "phi_00001_.safetensors"))
    assert any(not torch.equal(v, safetensors.torch.load_file(str(tmp_path / "run" / "phi.safetensors"))[k])
               for k, v in extended.items())


def test_os_errors_get_one_line_not_a_traceback(files, tmp_path, capsys):
    (tmp_path / "a_file").write_bytes(b"x")
    args = base_args(files, tmp_path / "a_file", "run")  # --runs-dir is a file: the run folder cannot be made
    code, err = run_cli_in_process([*args, "--iterations", "1"], capsys)
    assert code == 2 and "error:" in err and "a_file" in err and "Traceback" not in err, err
