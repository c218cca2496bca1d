"""The embedded teacher: a small Wan2.1-architecture DiT trained on procedural clips of shapes.

- :mod:`.shapes` — the deterministic clip generator (bouncing, colliding shapes; ground truth;
  prompts) and a colour detector;
- :mod:`.text` — the teacher's own small text encoder (fixed vocabulary, 4096-wide features);
- :mod:`.model` — :class:`~rehyat.teacher.model.Teacher` (DiT + encoder), its latent fold, files
  and generation;
- :mod:`.train` — the training recipe behind ``python -m rehyat train-teacher``;
- :mod:`.analysis` — how much of the teacher's attention reaches beyond a ReHyAt window.
"""
