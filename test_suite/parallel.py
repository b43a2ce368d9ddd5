"""The suite in several processes at once: python3 -m unittest tests.py runs its test
classes in WORKERS fresh processes (CHARRNN_TEST_WORKERS, default 2; 1 runs them in this
one), each class whole in one of them (its setUpClass once), and reports them as one run.

Most of the suite's time is single-threaded: importing TensorFlow in the processes the
tests start and tracing their steps, so two workers on 2 cores take about half the time
that one does. The workers stream their results back in subunit's protocol (a process
each, from testtools and python-subunit), which testtools turns into the calls of the
unittest result that the runner prints.
"""

import os
import subprocess
import sys
import unittest
from pathlib import Path

import subunit
import testtools

ROOT = Path(__file__).resolve().parent.parent
WORKERS = int(os.environ.get("CHARRNN_TEST_WORKERS", "2"))
IN_A_WORKER = "CHARRNN_TEST_WORKER"  # set in a worker, which then runs its tests itself


def parallel(suite, workers=WORKERS, cwd=ROOT):
    """suite as run by `workers` processes started in cwd, or suite itself for one
    worker (or in one)."""
    if workers <= 1 or os.environ.get(IN_A_WORKER):
        return suite
    return ParallelSuite(suite, workers, cwd)


def test_classes(suite):
    """The ids of the test classes in suite, in its order, each once."""
    ids = []
    for test in testtools.iterate_tests(suite):
        name = test.id().rsplit(".", 1)[0]
        if name not in ids:
            ids.append(name)
    return ids


class ParallelSuite(unittest.TestSuite):
    """The classes of a suite shared among worker processes: the i-th class goes to worker
    i mod workers, so classes of one module, which cost alike, are spread among them."""

    def __init__(self, suite, workers, cwd):
        super().__init__([suite])
        self.workers, self.cwd = workers, cwd

    def run(self, result, debug=False):
        classes = test_classes(self)
        groups = [classes[i::self.workers] for i in range(self.workers)]
        workers = testtools.ConcurrentStreamTestSuite(
            lambda: [(Worker(group, self.cwd), str(i)) for i, group in enumerate(groups) if group])
        stream = testtools.StreamToExtendedDecorator(result)
        stream.startTestRun()
        try:
            workers.run(stream)
        finally:
            stream.stopTestRun()
        return result


class Worker:
    """One process running the test classes named, streaming its results in subunit's protocol."""

    def __init__(self, classes, cwd):
        self.classes, self.cwd = classes, cwd

    def run(self, result):
        env = {**os.environ, IN_A_WORKER: "1"}
        with subprocess.Popen([sys.executable, "-m", "subunit.run", *self.classes], cwd=self.cwd, env=env,
                              stdout=subprocess.PIPE) as proc:
            subunit.ByteStreamToStreamResult(proc.stdout, non_subunit_name="stdout").run(result)
        if proc.returncode not in (0, 1):  # 1: a test failed, which the stream says
            raise RuntimeError(f"a test worker exited with {proc.returncode}: {' '.join(self.classes)}")
