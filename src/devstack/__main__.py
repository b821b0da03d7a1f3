"""``python -m devstack``: the command line behind ``scripts/stack``."""

import sys

from devstack.cli import main

sys.exit(main())
