"""The sections of benchmark.py, one module per concern; bench.common is what they share."""
