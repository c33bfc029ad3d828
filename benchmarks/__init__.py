"""Benchmarks: scripts that measure the library and write tables into ``benchmarks/results/``.

Run each from the repository root as a module, e.g. ``python -m benchmarks.saliency --help``.
Shared code (results folder, intervals, table writing) lives in :mod:`benchmarks.harness`.
"""
