"""``python -m loadtest``: locust is imported before the rest of the package, so that gevent patches
the standard library before anything opens a socket; no other module imports it at import time."""

import sys

import locust  # noqa: F401  (gevent's monkey-patching, before loadtest's own imports)

from loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
