"""``python -m autotune`` runs the CLI."""

import sys

from autotune.cli import main

sys.exit(main())
