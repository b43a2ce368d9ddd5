"""The suite's runner: classes shared among worker processes, reported as one run."""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

from test_suite import parallel

MODULE = textwrap.dedent('''
    import importlib.util, os, unittest
    # parallel.py alone: the test_suite package imports TensorFlow, which this module needs not
    spec = importlib.util.spec_from_file_location("parallel", {path!r})
    parallel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parallel)

    class A(unittest.TestCase):
        def test_passes(self):
            open(f"pid-{{os.getpid()}}", "w").close()

    class B(unittest.TestCase):
        def test_fails(self):
            open(f"pid-{{os.getpid()}}", "w").close()
            self.assertEqual(1, 2, "one is not two")

    class C(unittest.TestCase):
        def test_errs(self):
            raise RuntimeError("raised in a worker")

        @unittest.skip("skipped on purpose")
        def test_skipped(self):
            pass

    def load_tests(loader, tests, pattern):
        return parallel.parallel(tests, workers=2, cwd={cwd!r})
''')


class ParallelRunnerTest(unittest.TestCase):
    def test_failures_errors_and_skips_come_back(self):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "dummy_tests.py").write_text(MODULE.format(path=parallel.__file__, cwd=d))
            env = {k: v for k, v in os.environ.items() if k != parallel.IN_A_WORKER}  # as from a shell
            run = subprocess.run([sys.executable, "-m", "unittest", "dummy_tests.py"], cwd=d, env=env,
                                 capture_output=True, text=True, timeout=120)
            workers = list(Path(d).glob("pid-*"))
        self.assertEqual(len(workers), 2, "classes A and B ran in two processes")
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("Ran 4 tests", run.stderr)
        self.assertIn("FAILED (failures=2, skipped=1)", run.stderr)  # subunit reports an error as a failure
        self.assertIn("one is not two", run.stderr)
        self.assertIn("raised in a worker", run.stderr)
        self.assertIn("dummy_tests.B.test_fails", run.stderr)
