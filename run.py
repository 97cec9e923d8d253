#!/usr/bin/env python
"""`python run.py ...` is `minitune ...`: the command line lives in minitune/cli.py."""

import sys

from minitune.cli import main

if __name__ == "__main__":
    sys.exit(main())
