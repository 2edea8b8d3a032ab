"""`python -m daemon` is the same as the `finetuned` console script."""

import signal
import sys

if sys.argv[1:2] == ["run"]:
    # Before the imports: a stop request during start-up exits 0 and a SIGHUP is ignored (see cli.cmd_run).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from daemon.cli import main  # noqa: E402 - after the signal handlers, on purpose

raise SystemExit(main())
