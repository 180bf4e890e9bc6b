"""Exit codes of the ``autotune`` command."""

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a program whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141
#: ``autotune verify`` exits with this when the ranking did not hold (changed or
#: inconclusive), so a CI job can refuse to ship an unconfirmed recommendation.
EXIT_NOT_HELD = 1
