"""φ weight files: save, load and check the learned feature maps of converted blocks.

One job per module:

* :mod:`.phi_file` — the file format (metadata fields, save / load of a :class:`PhiWeights`);
* :mod:`.phi_tensors` — φ tensor names and shapes, and copying them from / into modules;
* :mod:`.base_model` — :class:`BaseModelInfo`, the shape of the model a file was made for;
* :mod:`.fingerprint` — the base model's self-attention fingerprint and its tolerance;
* :mod:`.compatibility` — :func:`check_compatible`: does a file fit a model;
* ``atomic_save_file`` — from :mod:`rehyat.atomic` (every atomic write of the package);
* ``check_name_length``, ``check_relative_name``, ``resolve_in_folder`` — from
  :mod:`rehyat.file_names` (file names from user input, resolved inside a models folder).

Every public name is importable from ``rehyat.weights``.
"""

from __future__ import annotations

from ..atomic import atomic_save_file
from ..file_names import MAX_NAME_BYTES, check_name_length, check_relative_name, resolve_in_folder
from .base_model import BaseModelInfo
from .compatibility import check_compatible
from .fingerprint import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FINGERPRINT_ROLES,
    FINGERPRINT_SAMPLES,
    FINGERPRINT_STATS,
    SCALE_SUFFIX,
    TensorGetter,
    WeightReader,
    check_fingerprint_values,
    fingerprint_length,
    fingerprint_module,
    fingerprint_state_dict,
    fingerprints_match,
    infer_num_layers,
    module_tensor_getter,
    needs_layer_to_read,
    self_attention_fingerprint,
    tensor_statistics,
)
from .phi_file import FORMAT, FORMAT_VERSION, PhiWeights, load_phi_weights, save_phi_weights
from .phi_tensors import (
    PHI_MAPS,
    PHI_PARAMS,
    apply_phi_tensors,
    check_phi_shapes,
    collect_phi_tensors,
    expected_phi_shapes,
    phi_key,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "FINGERPRINT_ROLES",
    "FINGERPRINT_SAMPLES",
    "FINGERPRINT_STATS",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_NAME_BYTES",
    "PHI_MAPS",
    "PHI_PARAMS",
    "SCALE_SUFFIX",
    "BaseModelInfo",
    "PhiWeights",
    "TensorGetter",
    "WeightReader",
    "apply_phi_tensors",
    "atomic_save_file",
    "check_compatible",
    "check_fingerprint_values",
    "check_name_length",
    "check_phi_shapes",
    "check_relative_name",
    "collect_phi_tensors",
    "expected_phi_shapes",
    "fingerprint_length",
    "fingerprint_module",
    "fingerprint_state_dict",
    "fingerprints_match",
    "infer_num_layers",
    "load_phi_weights",
    "module_tensor_getter",
    "needs_layer_to_read",
    "phi_key",
    "resolve_in_folder",
    "save_phi_weights",
    "self_attention_fingerprint",
    "tensor_statistics",
]
