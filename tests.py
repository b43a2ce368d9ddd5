"""Every test of the character RNN: python3 -m unittest tests.py, or pytest tests.py.

The tests live in test_suite/, one module per concern (text, model, training,
checkpoints, sampling, play, walkthrough). This file gathers their test classes
into its own namespace, which both unittest and pytest collect from; unittest runs
them in two processes at once (test_suite/parallel.py).
"""

import importlib
import unittest
from pathlib import Path

for _path in sorted(Path(__file__).resolve().parent.glob("test_suite/test_*.py")):
    _module = importlib.import_module(f"test_suite.{_path.stem}")
    globals().update({name: value for name, value in vars(_module).items()
                      if isinstance(value, type) and issubclass(value, unittest.TestCase)
                      and value.__module__ == _module.__name__})


def load_tests(loader, standard_tests, pattern):
    """unittest's hook: the classes shared among worker processes."""
    from test_suite.parallel import parallel
    return parallel(standard_tests)
