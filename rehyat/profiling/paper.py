"""The paper's compute figures (Fig. 4, Tables 6 and 8) next to this profiler's counts, as Markdown.

Everything at the paper's setting: Wan2.1-1.3B, 480×832 px, 81 frames (latent 21×60×104, i.e. the
paper's "21×30×52" token grid), φ with 256 hidden and 256 features. Regenerate docs/compute.md's
tables with ``python -m rehyat profile --paper``.
"""

from __future__ import annotations

from .cases import ReHyAtCase, SoftmaxCase, UniformHybridCase
from .presets import LatentGrid, get_preset
from .sweep import flops_entry

PAPER_LATENT = LatentGrid(21, 60, 104)
PAPER_TABLE6 = {1: 3.87, 2: 4.04, 3: 4.30, 5: 4.82}  # block TFLOPs, 25 converted blocks, To = 1
PAPER_TABLE8 = {True: 4.04, False: 4.17}  # 15×Tc=3, To=0; causal / non-causal (see docs/compute.md)
ACCOUNTINGS = ("incremental", "paper")


def _entry(case, accounting: str) -> dict:
    return flops_entry(case, get_preset("wan2.1-1.3b"), PAPER_LATENT, accounting)


def table6_rows() -> list[dict]:
    """Per Tc: the paper's block TFLOPs and ours (one converted block; and averaged over all 30)."""
    rows = []
    for tc, paper in PAPER_TABLE6.items():
        case = ReHyAtCase(tc, 1, converted_blocks=25)
        inc, pap = _entry(case, "incremental"), _entry(case, "paper")
        rows.append({"chunk_frames": tc, "paper": paper, "block_paper_accounting": pap["block_tflops"],
                     "block_incremental": inc["block_tflops"], "mean_of_30_blocks": inc["mean_block_tflops"]})
    return rows


def table8_rows() -> list[dict]:
    """Causal and non-causal 15×Tc=3, To=0: the paper's block TFLOPs and ours."""
    rows = []
    for causal, paper in PAPER_TABLE8.items():
        case = ReHyAtCase(3, 0, converted_blocks=15, causal=causal)
        rows.append({"causal": causal, "paper": paper,
                     "block_paper_accounting": _entry(case, "paper")["block_tflops"],
                     "block_incremental": _entry(case, "incremental")["block_tflops"]})
    return rows


def fig4_rows(accounting: str) -> dict:
    """One converted block's self-attention layer TFLOPs: softmax, uniform hybrid R, ReHyAt over Tc × To."""
    out = {"softmax": _entry(SoftmaxCase(), accounting)["attention_tflops"]}
    for rate in (2, 4, 8):
        out[f"uniform R={rate}"] = _entry(UniformHybridCase(rate), accounting)["attention_tflops"]
    for to in (0, 1, 2):
        out[f"ReHyAt To={to}"] = [_entry(ReHyAtCase(tc, to), accounting)["attention_tflops"]
                                  for tc in range(1, 8)]
    return out


def format_paper_comparison() -> str:
    """Markdown tables: Table 6, Table 8 and Fig. 4 against this profiler's counts."""
    lines = ["### Table 6 — block TFLOPs, 25 converted blocks, To = 1", "",
             "| Tc | paper | ours, paper accounting | ours, rehyat.ops kernels "
             "| mean of the 30 blocks (ops) |",
             "|---:|---:|---:|---:|---:|"]
    for r in table6_rows():
        lines.append(f"| {r['chunk_frames']} | {r['paper']:.2f} | {r['block_paper_accounting']:.3f} | "
                     f"{r['block_incremental']:.3f} | {r['mean_of_30_blocks']:.3f} |")
    lines += ["", "### Table 8 — block TFLOPs, 15 converted blocks, Tc = 3, To = 0", "",
              "| causal | paper | ours, paper accounting | ours, rehyat.ops kernels |",
              "|---|---:|---:|---:|"]
    for r in table8_rows():
        lines.append(f"| {'yes' if r['causal'] else 'no'} | {r['paper']:.2f} | "
                     f"{r['block_paper_accounting']:.3f} | {r['block_incremental']:.3f} |")
    for accounting in ACCOUNTINGS:
        rows = fig4_rows(accounting)
        title = f"### Fig. 4 — one block's self-attention TFLOPs (q/k/v/o + core), {accounting} accounting"
        lines += ["", title,
                  "", "| | " + " | ".join(f"Tc={tc}" for tc in range(1, 8)) + " |",
                  "|---|" + "---:|" * 7]
        for name, value in rows.items():
            cells = value if isinstance(value, list) else [value] * 7
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
        best = min(min(v) for k, v in rows.items() if k.startswith("ReHyAt"))
        tc3 = rows["ReHyAt To=1"][2]
        lines += ["", f"softmax / best ReHyAt (Tc=1, To=0): {rows['softmax'] / best:.2f}×; "
                      f"uniform R=2 / ReHyAt Tc=3, To=1: {rows['uniform R=2'] / tc3:.2f}×; "
                      f"softmax / ReHyAt Tc=3, To=1: {rows['softmax'] / tc3:.2f}×"]
    return "\n".join(lines)
