"""Benchmarks of the workbench (run as scripts or with ``python -m benchmarks.NAME``)."""
