"""The parts of ``benchmarks/attention.py``, one job per module.

``config`` (what a run measures), ``cases`` (inputs, attention callables, FLOPs), ``timing`` (wall
clock, derived speed-ups, pooling, profiling), ``memory`` (subprocess working-memory measurement),
``report`` (summary, machine facts, JSON output). The CLI stays ``python benchmarks/attention.py``.
"""
