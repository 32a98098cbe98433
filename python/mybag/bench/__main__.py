"""``python -m mybag.bench``: see mybag.bench's docstring and ``--help``."""

from mybag.bench.cli import main

raise SystemExit(main())
