"""Benchmarks of crisiscomms (``make bench``; ``python -m benchmarks.run --help``).

Not part of the installed package and not imported by it. Each benchmark runs in its own
process (``python -m benchmarks.<name>``) so its CPU time and peak RSS are its own, and writes
one JSON result that ``benchmarks.run`` gathers into a table and ``bench-results.json``.
"""
