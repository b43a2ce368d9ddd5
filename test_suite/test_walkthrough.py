"""Tests of walkthrough/: every chapter runs and its checks pass, and a check can fail.

    python3 -m unittest test_suite.test_walkthrough

Each chapter runs in its own process with --fast, as a reader would run it:
chapters 1, 2, 3 and 5 from the repository root, 4 and 6 from inside
walkthrough/. A chapter's checks raise AssertionError, so a wrong result gives
a non-zero exit code; the tests also look for the lines the checks print on
success.
"""

import contextlib
import importlib.util
import io
import os
import shlex
import subprocess
import sys
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALKTHROUGH = os.path.join(ROOT, "walkthrough")


def load_chapter(filename):
    """A chapter as a module (its name starts with a digit, so `import` cannot name it)."""
    spec = importlib.util.spec_from_file_location(filename[:-3], os.path.join(WALKTHROUGH, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Chapters(unittest.TestCase):
    def run_chapter(self, filename, cwd=ROOT):
        """Run a chapter with --fast; return its output, failing the test on a non-zero exit."""
        result = subprocess.run([sys.executable, os.path.join(WALKTHROUGH, filename), "--fast"], cwd=cwd,
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, f"{filename} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def assert_lines(self, output, *lines):
        for line in lines:
            self.assertIn(line, output.splitlines(), f"missing line {line!r} in:\n{output}")

    def test_01_derivatives(self):
        output = self.run_chapter("01_derivatives.py")
        self.assert_lines(output, "hand, finite differences and tf.GradientTape agree", "all checks passed")

    def test_02_autodiff(self):
        output = self.run_chapter("02_autodiff.py")
        self.assert_lines(output, "our autodiff agrees with TensorFlow")

    def test_03_gradient_descent(self):
        output = self.run_chapter("03_gradient_descent.py")
        self.assert_lines(output, "one-variable descent checked", "logistic regression trained")

    def test_04_vanilla_rnn(self):
        output = self.run_chapter("04_vanilla_rnn.py", cwd=WALKTHROUGH)
        self.assert_lines(output, "gradient check passed", "TensorFlow agrees",
                          "vanishing below s = 1, exploding above it, shown", "clipping checked")

    def test_05_gates(self):
        output = self.run_chapter("05_gates.py")
        self.assert_lines(output, "GRU matches Keras", "LSTM matches Keras", "the update gate keeps the gradient alive")

    def test_06_char_model(self):
        output = self.run_chapter("06_char_model.py", cwd=WALKTHROUGH)
        self.assert_lines(output, "every row continues the text of the same row of the batch before",
                          "temperature and Gumbel-max sampling checked", "the loss fell", "carrying the state helps")
        # The rnn_train.py command it prints parses with the script's own flags and checks.
        printed = output[output.index("python3 rnn_train.py"):].split("\n  python3 rnn_play.py")[0]
        args = shlex.split(printed.replace("\\\n", " "))[2:]
        check = "import sys, rnn_train; print('data', rnn_train.parse(sys.argv[1:])[0].data)"
        result = subprocess.run([sys.executable, "-c", check, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, f"the printed command {args} is rejected:\n{result.stderr}")
        self.assertEqual(result.stdout.strip(), "data ['walkthrough/sonnets.txt']")
        self.assertTrue(os.path.isfile(os.path.join(ROOT, "walkthrough", "sonnets.txt")))


class ChecksCanFail(unittest.TestCase):
    """The chapters' checks are not decoration: a wrong gradient is caught."""

    def setUp(self):
        quiet = contextlib.redirect_stdout(io.StringIO())  # the checks print a line each
        quiet.__enter__()
        self.addCleanup(quiet.__exit__, None, None, None)
        self.rnn = load_chapter("04_vanilla_rnn.py")
        rng = np.random.default_rng(1)
        V, H, B, T = 5, 4, 2, 3
        self.params = self.rnn.init_params(V, H, rng, scale=0.5)
        self.inputs, self.targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))  # [B, T]
        self.h0 = rng.normal(size=(H, B))
        self.loss = lambda p: self.rnn.loss_and_grads(p, self.inputs, self.targets, self.h0)[0]
        self.grads = self.rnn.loss_and_grads(self.params, self.inputs, self.targets, self.h0)[1]

    def test_correct_gradient_passes(self):
        self.rnn.gradient_check(self.loss, self.params, self.grads)

    def test_wrong_gradient_raises(self):
        wrong = {name: g.copy() for name, g in self.grads.items()}
        wrong["W_hh"][1, 2] += 1e-3 * np.abs(wrong["W_hh"]).max()  # one entry off by 0.1% of the largest
        with self.assertRaisesRegex(AssertionError, "dL/dW_hh against finite differences"):
            self.rnn.gradient_check(self.loss, self.params, wrong)

    def test_gradient_of_another_loss_raises(self):
        """A realistic slip: gradients computed from a zero state instead of the carried one."""
        zero_state = self.rnn.loss_and_grads(self.params, self.inputs, self.targets, np.zeros_like(self.h0))[1]
        with self.assertRaises(AssertionError):
            self.rnn.gradient_check(self.loss, self.params, zero_state)

    def test_check_rejects_nan(self):
        with self.assertRaises(AssertionError):
            self.rnn.check("nan", [np.nan], [1.0], 1e-6)


if __name__ == "__main__":
    unittest.main()
