"""``python -m bench [--quick] [--json PATH] [--repeat N]``: see :mod:`bench.run`."""

from __future__ import annotations

import sys

from bench.run import _ensure_malloc_env, main

if __name__ == "__main__":
    _ensure_malloc_env(sys.argv[1:])
    sys.exit(main(sys.argv[1:]))
