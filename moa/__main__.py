"""`python -m moa`: the command line."""

import sys

from moa.cli import main

sys.exit(main())
