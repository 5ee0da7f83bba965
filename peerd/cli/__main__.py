"""``python -m peerd.cli``: the same as the ``peerd`` console script."""

from peerd.cli import main

raise SystemExit(main())
