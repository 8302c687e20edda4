"""``python -m lowbit``: the same command line as ``lowbit``."""

from .cli import main

raise SystemExit(main())
