"""A profile report as text (a table) and as files (JSON + PNG plots, written atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .plots import chunk_figure, length_figure, save_figure

COLUMNS = ("attention_tflops", "block_tflops", "model_tflops", "model_share_of_softmax")


def _cases(report: dict[str, Any]) -> list[str]:
    return [k for k, v in report.items() if isinstance(v, dict) and "attention_tflops" in v]


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table: per case FLOPs, then the length sweep (with measurements, if any)."""
    model, latent = report["model"], report["latent"]
    lines = [
        f"{model['name']} ({model['num_layers']} blocks, dim {model['dim']}, {model['num_heads']} heads, "
        f"ffn {model['ffn_dim']}, text {model['text_len']} tokens) — latent "
        f"{latent['frames']}×{latent['height']}×{latent['width']} = {latent['video_frames']} frames at "
        f"{latent['pixels']} px, "
        f"{latent['tokens']} tokens ({latent['tokens_per_frame']} per frame)",
        f"accounting: {report['linear_accounting']} — {report['accounting']}",
        "",
        f"{'case':<44}{'attn TF':>10}{'block TF':>10}{'model TF':>11}{'vs softmax':>12}",
    ]
    for key in _cases(report):
        e = report[key]
        lines.append(f"{e['label']:<44}{e['attention_tflops']:>10.3f}{e['block_tflops']:>10.3f}"
                     f"{e['model_tflops']:>11.2f}{e['model_share_of_softmax']:>11.1%}")
    lines += ["", "one converted block's self-attention TFLOPs against Tc:",
              f"{'':<8}" + "".join(f"{'Tc=' + str(r['chunk_frames']):>9}" for r in next(iter(
                  report["chunk_sweep"].values())))]
    for name, rows in report["chunk_sweep"].items():
        lines.append(f"{name:<8}" + "".join(f"{r['attention_tflops']:>9.3f}" for r in rows))
    lines += ["", "against length (model TFLOPs per evaluation; measured: s per evaluation / peak MiB):"]
    keys = list(report["lengths"][0]["cases"]) if report["lengths"] else []
    lines.append(f"{'frames':>7}" + "".join(f"{k:>26}" for k in keys))
    for row in report["lengths"]:
        cells = []
        for key in keys:
            entry = row["cases"][key]
            cell = f"{entry['model_tflops']:.2f} TF"
            measured = entry.get("measured")
            if measured and "error" not in measured:
                cell += f" {measured['step_seconds']:.3g}s {measured['peak_memory_mib']:.0f}MiB"
            elif measured:
                cell += " (n/a)"
            cells.append(f"{cell:>26}")
        lines.append(f"{row['video_frames']:>7}" + "".join(cells))
    measured = [row["cases"][k]["measured"] for row in report["lengths"] for k in keys
                if "step_seconds" in row["cases"][k].get("measured", {})]
    if measured:
        m = measured[0]
        lines.append(f"measured on a {m['layers']}-block model of these sizes on {m['device']} "
                     f"(memory: {m['memory_method']}); TFLOPs are for the full model")
    errors = {row["cases"][k]["measured"]["error"] for row in report["lengths"] for k in keys
              if "error" in row["cases"][k].get("measured", {})}
    lines += [f"not measured: {e}" for e in sorted(errors)]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """profile.json, profile.txt, lengths.png and chunk_sweep.png in ``out_dir``."""
    out = Path(out_dir)
    table = out / "profile.txt"
    out.mkdir(parents=True, exist_ok=True)
    tmp = table.with_name(".profile.txt.tmp")
    tmp.write_text(format_table(report) + "\n")
    os.replace(tmp, table)
    return {"json": write_json(report, out / "profile.json"), "table": table,
            "lengths_plot": save_figure(length_figure(report), out / "lengths.png"),
            "chunk_plot": save_figure(chunk_figure(report), out / "chunk_sweep.png")}
