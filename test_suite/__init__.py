"""The test modules, one per concern; tests.py gathers them."""
