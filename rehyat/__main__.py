"""``python -m rehyat``: see :mod:`rehyat.cli`."""

import sys

from .cli import main

sys.exit(main())
