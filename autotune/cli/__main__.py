"""``python -m autotune.cli`` runs the CLI."""

import sys

from autotune.cli import main

sys.exit(main())
