"""The ``ssgan`` command's entry point, kept free of heavy imports: Ctrl-C while torch, Hydra and the rest
load (a second or more) ends with exit code 130 and one line, as it does once ``cli.main`` runs."""

import signal
import sys


def entry_point() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("ssgan: interrupted while starting; nothing was written", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    sys.exit(main())
