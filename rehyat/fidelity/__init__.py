"""The fidelity table: every ReHyAt configuration and baseline against the embedded softmax teacher.

``python -m rehyat fidelity`` (:mod:`rehyat.fidelity.run`) distils each configuration with the
same budget, generates held-out clips with it and with the teacher from the same prompts and
seeds, and writes ``fidelity.md`` / ``fidelity.json`` / ``fidelity_scatter.png``
(:mod:`rehyat.fidelity.report`). Cases: :mod:`rehyat.fidelity.cases`; metrics:
:mod:`rehyat.fidelity.clip_metrics`; compute: :mod:`rehyat.fidelity.cost`. Calibration rows and the
block-causal oracle: :mod:`rehyat.fidelity.calibration`, :mod:`rehyat.fidelity.oracle`; φ seeds:
:mod:`rehyat.fidelity.seeds`; attention error: :mod:`rehyat.fidelity.attention_section`; the shipped
student: :mod:`rehyat.fidelity.shipped`; their Markdown: :mod:`rehyat.fidelity.report_sections`.
"""
