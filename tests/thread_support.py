"""The ``one_thread`` fixture of the training tests (tiny models, shared 2-core CI machine).

Import it into a test module (``from thread_support import one_thread``, listed in ``__all__``):
pytest then applies it to every test of that module (it is autouse).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and reproducibly) on one thread of the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
