"""`python -m daemon` is the same as the `finetuned` console script."""

from daemon.cli import main

raise SystemExit(main())
