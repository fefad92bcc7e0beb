"""``python -m reclf ...``: the same command line as the ``reclf`` script."""

import sys

from reclf.cli import main

if __name__ == "__main__":
    sys.exit(main())
