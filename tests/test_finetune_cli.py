"""``python -m rehyat make-dataset`` and ``finetune`` end to end on a tiny Wan (real key names)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from comfy_support import tiny_wan_state_dict
from finetune_support import CONVERSION
from safetensors.torch import load_file, save_file
from thread_support import one_thread

from rehyat.cli import build_parser, main
from rehyat.conditioning_io import save_conditioning
from rehyat.models.wan import WanDiT
from rehyat.models.wan_rehyat import convert, save_phi
from rehyat.training.dataset import LatentDataset
from rehyat.weights import load_phi_weights

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sd = tiny_wan_state_dict(seed=0)
    save_file(sd, str(root / "wan.safetensors"))
    save_phi(convert(WanDiT.from_state_dict(sd), CONVERSION), root / "phi.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name, tokens in (("cat", 5), ("dog", 7), ("neg", 3)):
        save_conditioning(root / f"{name}.safetensors", [[torch.randn(1, tokens, 4096, generator=gen), {}]])
    return root


def test_every_option_is_explained() -> None:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("finetune", "make-dataset"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


def test_make_dataset_then_finetune_and_resume(files, capsys) -> None:
    data = files / "data"
    common = [
        "--model",
        str(files / "wan.safetensors"),
        "--out",
        str(data),
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "2",
        "--cfg",
        "3",
    ]
    assert (
        main(
            [
                "make-dataset",
                *common,
                "--prompts",
                str(files / "cat.safetensors"),
                str(files / "dog.safetensors"),
                "--negative",
                str(files / "neg.safetensors"),
                "--seeds",
                "0",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 4 and summary["latent_shape"] == [16, 3, 4, 4]
    dataset = LatentDataset.open(data)
    entries = dataset.entries()
    assert [(e["prompt_file"], e["seed"]) for e in entries] == [
        ("cat.safetensors", 0),
        ("cat.safetensors", 1),
        ("dog.safetensors", 0),
        ("dog.safetensors", 1),
    ]
    assert entries[0]["source"] == "teacher" and entries[0]["steps"] == 2
    assert not torch.equal(dataset.load(0).latent, dataset.load(1).latent)  # the seed matters
    with pytest.raises(SystemExit):  # a different size into the same folder is refused
        main(
            [
                "make-dataset",
                *common[:-8],
                "--height",
                "48",
                "--width",
                "32",
                "--steps",
                "1",
                "--prompts",
                str(files / "cat.safetensors"),
            ]
        )
    assert "differs from the dataset" in capsys.readouterr().err

    args = [
        "finetune",
        "--model",
        str(files / "wan.safetensors"),
        "--phi",
        str(files / "phi.safetensors"),
        "--dataset",
        str(data),
        "--run-name",
        "cats",
        "--runs-dir",
        str(files / "runs"),
        "--batch-size",
        "2",
        "--lora-rank",
        "4",
        "--learning-rate",
        "1e-3",
        "--checkpoint-every",
        "1",
    ]
    assert main([*args, "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 2 and report["resumed_from"] is None and len(report["losses_first"]) == 2
    lora = load_file(report["files"]["lora"])
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in lora
    phi = load_phi_weights(report["files"]["phi"])
    assert phi.training["stage"] == "finetune" and phi.training["steps"] == 2
    assert (files / "runs" / "cats" / "loss.png").is_file()
    assert load_file(str(files / "wan.safetensors")).keys() == tiny_wan_state_dict(seed=0).keys()

    assert main([*args, "--steps", "3"]) == 0  # same run name: continues from step 2
    report = json.loads(capsys.readouterr().out)
    assert report["resumed_from"] == 2 and report["steps"] == 3
    assert main([*args, "--steps", "3"]) == 0  # finished run again: new file names, nothing overwritten
    again = json.loads(capsys.readouterr().out)
    assert again["files"]["lora"].endswith("cats_s3_01_lora.safetensors")
    assert torch.equal(load_file(again["files"]["lora"])["diffusion_model.blocks.1.ffn.2.lora_up.weight"],
                       load_file(report["files"]["lora"])["diffusion_model.blocks.1.ffn.2.lora_up.weight"])
    with pytest.raises(SystemExit):  # same run name, other settings: refused
        main([*args, "--steps", "4", "--trainable", "everything"])
    assert "another model or config" in capsys.readouterr().err
