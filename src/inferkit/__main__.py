"""``python -m inferkit`` runs the command line."""

import sys

from inferkit.cli import main

sys.exit(main())
