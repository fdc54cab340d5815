"""The exit statuses of every `fusion-runner` command (SPEC's client commands).

OK: done, or every watched run COMPLETED; FAILURE: an unknown or ambiguous
id, a database or config error, a run that did not complete; USAGE: bad
arguments (argparse's own convention, kept for ours); INTERRUPTED: Ctrl-C,
128 + SIGINT as a shell reports a command the signal ended.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
