"""Benchmarks of the gateway: ``python -m bench <name>`` (see bench/README.md).

Each benchmark is a module with ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``, registered in :data:`bench.__main__.BENCHMARKS`. Results
are printed and written as JSON into ``bench/results/``.
"""
