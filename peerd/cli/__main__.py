"""``python -m peerd.cli``: the same as the ``peerd`` console script."""

from . import main

raise SystemExit(main())
