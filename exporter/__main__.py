"""The process entry point (`python -m exporter` and the console script): the first listing goes out before
the exporter itself is imported (see `earlyread`), then the CLI runs."""

import sys

from exporter.core import memory
from exporter.engine import earlyread


def main() -> int:
    memory.pause_collector_for_startup()  # resumed once the app is built (see memory.py)
    earlyread.start(sys.argv[1:])
    from exporter.cli import main as cli_main  # after the listing went out: why this module exists

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
