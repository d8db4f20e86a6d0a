"""``python -m loadtest.capacity``: see :mod:`loadtest.capacity.cli`."""

import sys

from loadtest.capacity.cli import main

if __name__ == "__main__":
    sys.exit(main())
