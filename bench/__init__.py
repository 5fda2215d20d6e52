"""Benchmarks: scripts that print and record what onnxinv measures (see bench/README.md).

Run each from the repository root, as ``python bench/NAME.py`` or ``python -m bench.NAME``; the
modules import each other as ``bench.NAME``, and the tests import them the same way (pytest
puts the repository root on ``sys.path``: ``pythonpath`` in pyproject.toml).
"""
