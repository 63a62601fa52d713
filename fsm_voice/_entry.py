"""The ``fsm-voice`` console script: imports the CLI inside the Ctrl-C guard, so an interrupt
during the (slow) imports is an exit status, not a traceback."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    """:func:`fsm_voice.cli.main`, with SIGINT during its import giving 130 quietly."""
    try:
        from fsm_voice.cli import main as cli_main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one must not print either
        return 128 + signal.SIGINT
    return cli_main(process=True)


if __name__ == "__main__":
    sys.exit(main())
