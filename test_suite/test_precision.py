"""Mixed precision (precision.py and the low-precision paths of model.py and fused.py):
which precision a run picks, how far bf16 and fp16 stay from fp32, and checkpoints
that do not depend on it.

Tolerances. bf16 keeps 8 significant bits, so one rounding moves a value by at most
u = 2^-8 of it (fp16: 11 bits, u = 2^-11). A matmul in the low precision rounds
both operands and its result, and errors of random sign add up in quadrature over
a sum, so each product is off by about 2u; the tests compare whole tensors by
||low - fp32|| / ||fp32||, through two layers, time and the backward pass.
Measured at these sizes: 1-1.2u for the fused GRU and LSTM, 3u for the plain RNN
(its tanh passes every error on), 1.5-3.6u for the stock layers, which also round
the state to bf16 at every step. The bounds are 4u (fused) and 8u (stock), with
a check that the low precision really ran (the error is not zero).
"""

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import keras
import numpy as np

from charrnn import checkpoints as ckpts, precision
import rnn_train
from charrnn import steps, training
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.precision import LossScale, resolve
from test_suite.helpers import (checkpoint_tensors, copy_weights, forward_and_gradients, play, quiet_train, random_ids,
                                random_states, tf, tiny, tiny_model_config)

ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 vaes"  # this project's EPYC
SAPPHIRE_RAPIDS = "fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN3 = "fpu sse2 avx2 fma"
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
BOUND = {"fused": 4, "keras": 8}  # in units of the roundoff; see the module docstring


class ResolveTest(unittest.TestCase):
    """precision.resolve: what --precision becomes on a given CPU or GPU."""

    def test_auto_picks_bf16_where_the_hardware_multiplies_it_natively(self):
        for flags, expected in ((ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16 and avx512_bf16")):
            choice = resolve("auto", flags, [])
            self.assertEqual(choice.precision, "bf16")
            self.assertEqual(choice.describe(), f"precision bf16 (auto: this CPU multiplies bf16 natively, {expected})")
            self.assertEqual(choice.warning, "")
        for flags in (ZEN3, "", "avx512_bf16x avx512f"):  # a flag is a whole word
            choice = resolve("auto", flags, [])
            self.assertEqual(choice.precision, "fp32", flags)
            self.assertIn("this CPU has no native bf16", choice.reason)
        self.assertEqual(resolve("fp32", ZEN4, []).precision, "fp32")

    def test_auto_picks_fp32_on_every_gpu_and_says_why(self):
        # A GPU decides when there is one, whatever the CPU: cuDNN computes bf16 in fp32, and
        # from 8.0 fp32 already runs as TF32 (precision.py's docstring has the reports).
        for capability, shown in (((8, 0), "8.0"), ((8, 6), "8.6"), ((9, 0), "9.0"), ((12, 0), "12.0")):
            choice = resolve("auto", SAPPHIRE_RAPIDS, [capability, (7, 0)])
            self.assertEqual(choice.precision, "fp32", capability)
            self.assertEqual(choice.warning, "")
            self.assertIn(f"compute capability {shown}, fp32 matmuls run as TF32", choice.reason)
            self.assertIn("tensorflow#60108", choice.reason)
        for capability, shown in (((7, 5), "7.5"), ((7, 0), "7.0"), ((6, 1), "6.1"), (None, "unknown")):
            choice = resolve("auto", ZEN4, [capability])
            self.assertEqual(choice.precision, "fp32", capability)
            self.assertIn(f"compute capability {shown}, has no bf16 or TF32 tensor cores", choice.reason)
            self.assertIn("keras#14047", choice.reason)
        self.assertTrue(resolve("auto", ZEN3, [(9, 0)]).describe().startswith("precision fp32 (auto: on this GPU"))
        # Asked for, bf16 and fp16 still run on a GPU; bf16 below 8.0 with the emulation warning.
        self.assertEqual(resolve("bf16", ZEN3, [(9, 0)]), precision.Choice(
            "bf16", "as asked; this GPU multiplies bf16 natively, compute capability 9.0"))
        self.assertEqual(resolve("fp16", ZEN3, [(8, 0)]).precision, "fp16")

    def test_bf16_without_native_support_runs_emulated_with_a_one_line_warning(self):
        choice = resolve("bf16", ZEN3, [])
        self.assertEqual(choice.precision, "bf16")
        self.assertIn("emulated", choice.reason)
        self.assertRegex(choice.warning, r"^warning: --precision bf16 .* slower than fp32")
        self.assertNotIn("\n", choice.warning)
        self.assertEqual(resolve("bf16", ZEN4, []).warning, "")
        self.assertTrue(resolve("bf16", ZEN4, [(7, 0)]).warning)

    def test_fp16_needs_a_gpu(self):
        with self.assertRaisesRegex(UserError, r"^--precision fp16 needs a GPU.*use --precision bf16") as caught:
            resolve("fp16", ZEN4, [])
        self.assertNotIn("\n", str(caught.exception))
        self.assertEqual(resolve("fp16", ZEN3, [(7, 5)]).precision, "fp16")
        with self.assertRaisesRegex(UserError, "--precision must be one of"):
            resolve("fp8", ZEN4, [])

    def test_cpu_flags_come_from_proc_cpuinfo(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "cpuinfo")
            with open(path, "w") as f:
                f.write(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {ZEN4}\n\nprocessor\t: 1\nflags\t: x\n")
            self.assertEqual(precision.cpu_flags(path), ZEN4)
            self.assertEqual(precision.cpu_flags(os.path.join(tmp, "missing")), "")


class NumericsTest(unittest.TestCase):
    def test_low_precision_outputs_and_gradients_stay_near_fp32(self):
        ids, y = random_ids(64, 6), random_ids(64, 6, seed=5)  # 64 rows: the fused path's two row groups
        for implementation in ("fused", "keras"):
            for cell in ("gru", "lstm", "rnn"):
                config = tiny_model_config(cell=cell, units=32, embedding=4 if cell == "lstm" else 0)
                reference = CharRNN(config, implementation)
                states = random_states(reference, 64)
                expected = forward_and_gradients(reference, ids, y, states)[1]
                for low in ("bf16", "fp16"):
                    with self.subTest(implementation=implementation, cell=cell, precision=low):
                        model = CharRNN(config, implementation, precision=low)
                        copy_weights(reference, model)
                        got = forward_and_gradients(model, ids, y, states)[1]
                        bound = BOUND[implementation] * UNIT_ROUNDOFF[low]
                        for name, value in expected.items():
                            self.assertEqual(got[name].dtype, tf.float32, name)
                            error = float(tf.norm(got[name] - value) / tf.norm(value))
                            self.assertLess(error, bound, name)
                        self.assertGreater(float(tf.norm(got["logits"] - expected["logits"])), 0)

    def test_the_variables_stay_float32_and_keep_their_names(self):
        for implementation in ("fused", "keras"):
            fp32 = CharRNN(tiny_model_config(embedding=4), implementation).named_variables()
            bf16 = CharRNN(tiny_model_config(embedding=4), implementation, precision="bf16").named_variables()
            self.assertEqual(list(bf16), list(fp32))
            self.assertEqual({v.dtype for v in bf16.values()}, {tf.float32})

    def test_fp16_loss_scaling_skips_overflows_then_trains_like_fp32(self):
        # Plain SGD, no clipping: a wrongly unscaled gradient would show in the weights
        # (Adam would hide a constant factor).
        config = tiny_model_config()
        fp16, fp32 = CharRNN(config, "fused", precision="fp16"), CharRNN(config, "fused")
        copy_weights(fp32, fp16)
        ids, y = random_ids(8, 6), random_ids(8, 6, seed=5)
        scale = LossScale(initial=2.0 ** 40, growth_steps=3)  # 2^40 times the loss overflows fp16 (max 65504)
        train_steps = {}
        for name, model, loss_scale in (("fp16", fp16, scale), ("fp32", fp32, None)):
            variables = list(model.named_variables().values())
            states = [tf.Variable(s) for s in model.initial_states(8)]
            sgd = keras.optimizers.SGD(0.5)
            sgd.build(variables)
            train_steps[name] = steps.make_train_step(model, sgd, variables, states, 1e9, loss_scale)
        start = {name: v.numpy() for name, v in fp16.named_variables().items()}
        skipped = 0
        while True:
            previous = float(scale.scale)
            _, _, finite = train_steps["fp16"](ids, y)
            if bool(finite):
                break
            skipped += 1
            self.assertEqual(float(scale.scale), previous / 2)  # halved, and nothing else changed
            for name, v in fp16.named_variables().items():
                np.testing.assert_array_equal(v.numpy(), start[name], err_msg=name)
        self.assertGreater(skipped, 3)
        train_steps["fp32"](ids, y)
        for _ in range(2):
            for step in train_steps.values():
                self.assertTrue(bool(step(ids, y)[2]))
        self.assertEqual(float(scale.scale), 2 * previous)  # doubled after growth_steps finite steps
        for name, v in fp16.named_variables().items():
            moved = fp32.named_variables()[name].numpy() - start[name]
            error = np.linalg.norm(v.numpy() - start[name] - moved) / np.linalg.norm(moved)
            self.assertLess(error, 8 * UNIT_ROUNDOFF["fp16"], name)


class RunTest(unittest.TestCase):
    """Runs, checkpoints and generation: the precision belongs to the process, not the run."""

    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def _tiny(self, **overrides):
        return tiny(self.tmp, validation="none", sample_every=1000, **overrides)  # checkpoints only

    def test_a_bf16_run_resumes_in_fp32_and_back_and_plays(self):
        quiet_train(self._tiny(precision="bf16", max_steps=6))
        quiet_train(self._tiny(precision="fp32", max_steps=12), resume="r", given={"max_steps", "precision"})
        run = os.path.join(self.tmp, "ck", "r")
        in_bf16, in_fp32 = (checkpoint_tensors(os.path.join(run, f"ckpt-{step}"), "") for step in (6, 12))
        self.assertEqual(sorted(in_bf16), sorted(in_fp32))  # the same objects, the same dtypes
        for name, value in in_bf16.items():
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
                self.assertEqual(np.asarray(value).dtype, np.asarray(in_fp32[name]).dtype, name)
        floats = {value.dtype for name, value in in_bf16.items()
                  if name.startswith(("weights/", "optimizer/", "state/")) and value.dtype.kind == "f"}
        self.assertEqual(floats, {np.dtype(np.float32)})  # the weights, Adam's slots, the carried state
        quiet_train(self._tiny(precision="bf16", max_steps=18), resume="r", given={"max_steps", "precision"})
        self.assertTrue(ckpts.latest(run).endswith("ckpt-18"))
        code, out, err = play("r", "--checkpoint-dir", os.path.join(self.tmp, "ck"), "-n", "40", "--seed", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), 40)

    def test_resume_in_bf16_is_exact(self):
        quiet_train(self._tiny(run="whole", precision="bf16", max_steps=8))
        quiet_train(self._tiny(run="split", precision="bf16", max_steps=4))
        quiet_train(self._tiny(precision="bf16", max_steps=8), resume="split", given={"max_steps"})
        whole = ckpts.latest(os.path.join(self.tmp, "ck", "whole"))
        split = ckpts.latest(os.path.join(self.tmp, "ck", "split"))
        for section in ("weights/", "optimizer/", "rng/", "state/"):
            a, b = checkpoint_tensors(whole, section), checkpoint_tensors(split, section)
            self.assertTrue(a, section)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def _train_cli(self, *flags):
        """rnn_train.main in this process: (exit code, stderr)."""
        cfg = tiny(self.tmp)
        argv = ["--data", *cfg.data, "--layers", "1", "--units", "8", "--seqlen", "8", "--batch-size", "4",
                "--max-steps", "1", "--validation", "none", "--checkpoint-dir", cfg.checkpoint_dir, "--log-dir", cfg.log_dir, *flags]
        err = io.StringIO()
        with mock.patch.dict(os.environ), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = rnn_train.main(argv)
        return code, err.getvalue()

    def test_the_new_run_line_says_the_precision_and_why(self):
        with mock.patch("charrnn.precision.cpu_flags", return_value=ZEN4):
            code, err = self._train_cli("--run", "a")
        self.assertEqual(code, 0, err)
        self.assertIn("precision bf16 (auto: this CPU multiplies bf16 natively, avx512_bf16)", err.splitlines()[0])
        with mock.patch("charrnn.precision.cpu_flags", return_value=ZEN3):
            code, err = self._train_cli("--run", "b")
            self.assertIn("precision fp32 (auto: this CPU has no native bf16", err)
            code, err = self._train_cli("--run", "c", "--precision", "bf16")
        self.assertEqual(code, 0, err)
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("emulated and will be slower than fp32", warnings[0])

    def test_fp16_on_a_cpu_is_refused_in_one_line_and_leaves_nothing(self):
        code, err = self._train_cli("--run", "f", "--precision", "fp16")
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1)
        self.assertRegex(err, r"^error: --precision fp16 needs a GPU")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "f")))


class BenchmarkTest(unittest.TestCase):
    def test_the_benchmark_trains_in_fp32_and_bf16_and_prints_both_losses(self):
        """benchmark.py precision, shortened: both runs train, are read back and scored."""
        with tempfile.TemporaryDirectory() as tmp:
            text = os.path.join(tmp, "text.txt")
            rng = np.random.default_rng(0)
            words = ["the ", "king ", "and ", "queen ", "of ", "night ", "speak ", "now\n"]
            with open(text, "w", encoding="utf-8") as f:
                f.write("".join(rng.choice(words, 12_000)))
            r = subprocess.run([sys.executable, "benchmark.py", "precision", "--data", text, "--steps", "2"],
                               capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        trained = re.findall(r"2 steps trained in (fp32|bf16) .*validation loss read in fp32 (\d+\.\d+)", r.stdout)
        self.assertEqual([p for p, _ in trained], ["fp32", "bf16"], r.stdout)
        self.assertRegex(r.stdout, r"bf16 - fp32 = [+-]\d+\.\d{4} nats/char")
