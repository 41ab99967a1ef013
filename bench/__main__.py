"""``python -m bench <name> [options]``: run one benchmark (``--help`` lists them)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module implementing DESCRIPTION, add_arguments(parser) and run(args) -> int.
BENCHMARKS: dict[str, str] = {
    "audit": "bench.audit",
    "exchange": "bench.exchange",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the chosen benchmark, return its exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    modules = {}
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        sub = commands.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return int(modules[args.benchmark].run(args))


if __name__ == "__main__":
    sys.exit(main())
