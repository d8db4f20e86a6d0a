"""``python -m tests.faults [--short]``: run the fault suite, print its table (``make chaos``)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.faults.suite import FULL, HEADER, SHORT, row_line, run_suite, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="the test suite's short form")
    parser.add_argument("--keep", type=Path, help="keep logs and data under this directory")
    args = parser.parse_args()
    timing = SHORT if args.short else FULL
    print(HEADER, flush=True)

    def report(row) -> None:
        print(row_line(row), flush=True)

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        rows = run_suite(args.keep, timing, report)
    else:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            rows = run_suite(Path(tmp), timing, report)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
