"""`python -m minitune ...` is the `minitune` command."""

import sys

from minitune.cli import main

sys.exit(main())
