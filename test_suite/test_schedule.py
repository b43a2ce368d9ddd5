"""The learning-rate schedule (schedule.py), --max-time's plan (budget.py), and AdamW (steps.make_optimizer)."""

import contextlib
import io
import math
import os
import re
import signal
import tempfile
import unittest
from unittest import mock

import numpy as np

from charrnn import checkpoints as ckpts
import rnn_train
from charrnn import budget as budgets, logs, schedule, steps, training
from charrnn.config import TrainConfig
from charrnn.errors import UserError
from charrnn.model import CharRNN
from test_suite.helpers import checkpoint_tensors, quiet_train, read_scalars, tf, tiny, tiny_model_config, train_stderr


class Killed(BaseException):
    """A process killed at once (kill -9): nothing after it runs, no piece's at_end."""


class FakeClock:
    """budget.now for tests: each reading advances the time by `tick` seconds."""

    def __init__(self, tick=0.01):
        self.time, self.tick = 0.0, tick

    def __call__(self):
        self.time += self.tick
        return self.time


@contextlib.contextmanager
def sigterm_after(step):
    """A SIGTERM right after training step `step`, as if the process were killed there."""
    original = training.Trainer.train_step

    def train_step(trainer, x, y):
        done = original(trainer, x, y)
        if trainer.step == step:
            signal.raise_signal(signal.SIGTERM)
        return done

    with mock.patch.object(training.Trainer, "train_step", train_step):
        yield


def assert_same_run(test, prefix_a, prefix_b):
    for section in ("weights/", "optimizer/", "rng/", "state/"):
        a, b = checkpoint_tensors(prefix_a, section), checkpoint_tensors(prefix_b, section)
        test.assertTrue(a, section)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class LearningRateTest(unittest.TestCase):
    def test_values_at_known_steps(self):
        cfg = TrainConfig(lr=1e-3, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
        rate = lambda step, total=110, **kw: schedule.learning_rate(TrainConfig(**{**vars(cfg), **kw}), step, total)
        self.assertAlmostEqual(rate(1), 1e-4)      # the first step already moves
        self.assertAlmostEqual(rate(5), 5e-4)
        self.assertAlmostEqual(rate(10), 1e-3)     # the warm-up's last step reaches --lr
        self.assertAlmostEqual(rate(60), 0.55e-3)  # halfway through the decay: (1 + 0.1) / 2
        self.assertAlmostEqual(rate(35), 1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2)
        self.assertAlmostEqual(rate(110), 1e-4)    # the floor at the last step, and after it
        self.assertAlmostEqual(rate(500), 1e-4)
        self.assertAlmostEqual(rate(35, decay="linear"), 1e-4 + 0.9e-3 * 0.75)
        self.assertAlmostEqual(rate(60, decay="none"), 1e-3)
        self.assertAlmostEqual(rate(60, total=None), 1e-3)  # a --max-time run before its plan
        self.assertAlmostEqual(rate(1, warmup_steps=0, decay="none"), 1e-3)  # no warm-up: --lr at once

    def test_bad_values_are_one_line_errors_naming_the_flag(self):
        for argv, pattern in ((["--max-time", "ten"], "--max-time 'ten' is not a duration"),
                              (["--max-time", "0m"], "--max-time '0m' is shorter than 30s"),
                              (["--min-lr-ratio", "1.5"], "--min-lr-ratio must be in"),
                              (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
                              (["--weight-decay", "-0.1"], "--weight-decay must be in"),
                              (["--weight-drop", "1"], "--weight-drop must be in"),
                              (["--lr", "inf"], r"--lr must be finite \(got inf\)"),
                              (["--lr", "nan"], r"--lr must be a number \(got nan\)"),
                              (["--layers", "100000", "--units", "8"], r"--layers must be at most 32 \(got 100000\)")):
            with self.subTest(argv=argv), self.assertRaisesRegex(UserError, pattern):
                rnn_train.parse(argv)
        TrainConfig(layers=33, units=8).check(saved=True)  # a run saved before the cap still reads
        for text, seconds in (("90s", 90), ("10m", 600), ("1h30m", 5400), ("2h", 7200), ("1.5m", 90)):
            self.assertEqual(rnn_train.parse(["--max-time", text])[0].max_seconds, seconds)

    def test_a_warm_up_longer_than_the_run_is_warned_about(self):
        def stderr_of(*argv):
            err = io.StringIO()
            with mock.patch.object(training, "train", return_value=0), contextlib.redirect_stderr(err):
                self.assertEqual(rnn_train.main(list(argv)), 0)
            return err.getvalue()

        self.assertEqual(stderr_of("--warmup-steps", "1000", "--max-steps", "40", "--lr", "0.002"),
                         "warning: --warmup-steps 1000 is longer than the run's 40 steps (--max-steps): the "
                         "learning rate stops at 8e-05 and never reaches --lr 0.002; lower --warmup-steps\n")
        self.assertEqual(stderr_of("--warmup-steps", "40", "--max-steps", "40"), "")
        self.assertEqual(stderr_of("--warmup-steps", "1000"), "")  # --epochs: the steps follow from the corpus


class WarmUpWarningTest(unittest.TestCase):
    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def test_a_warm_up_longer_than_the_epochs_or_the_plan_is_warned_about(self):
        err = train_stderr(tiny(self.tmp, run="epochs", max_steps=0, epochs=1, batch_size=16, seqlen=32,
                                warmup_steps=1000, lr=0.002))
        self.assertRegex(err, r"(?m)^warning: --warmup-steps 1000 is longer than the run's \d+ steps \(--epochs 1\): "
                              r"the learning rate stops at \S+ and never reaches --lr 0.002; lower --warmup-steps$")
        out = io.StringIO()
        with mock.patch("charrnn.budget.now", FakeClock(0.5)), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(io.StringIO()):
            training.train(tiny(self.tmp, run="budget", max_steps=0, max_time="30s", warmup_steps=100_000))
        self.assertRegex(out.getvalue(), r"(?m)^warning: --warmup-steps 100000 is longer than the run's \d+ steps "
                                         r"\(planned for --max-time 30s\): the learning rate stops at")
        self.assertEqual(out.getvalue().count("warning: --warmup-steps"), 1)


class BudgetTest(unittest.TestCase):
    def test_the_plan_fills_the_time_left_at_the_measured_speeds(self):
        clock = FakeClock(tick=0.0)
        with mock.patch("charrnn.budget.now", clock):
            budget = budgets.Budget(100.0, spent=10.0)
            budget.stepped(1, first_step=0)
            self.assertIsNone(budget.window_start)  # the first two steps trace: not timed
            budget.stepped(2, first_step=0)
            budget.validated(3.0)   # the first validation of a process traces: time aside, not a timing
            budget.validated(1.0)
            clock.time += 4.0 + 5.0  # 4 s of validations, 5 s of steps
            self.assertTrue(budget.ready_to_plan())  # 5 s = 5% of 100 s
            planned, per_step = budget.plan(52, val_every=10)
        self.assertAlmostEqual(per_step, 0.1)   # 5 s over the 50 steps since the window opened
        # left: 100 - (10 + 9) spent - the reserve for the last validation (1 s timed) and checkpoint,
        # at 0.1 + 1/10 s a step
        reserve = budgets.VALIDATION_MARGIN * 1 + budgets.SAVE_SECONDS
        self.assertEqual(planned, 52 + math.floor((100 - 19 - reserve) / 0.2))
        self.assertFalse(budget.ready_to_plan())

    def test_the_deadline_keeps_back_the_last_validation_and_checkpoint(self):
        clock = FakeClock(tick=0.0)
        with mock.patch("charrnn.budget.now", clock):
            budget = budgets.Budget(60.0, spent=50.0)
            budget.validations, budget.validation_seconds = 2, 3.0
            clock.time += 60 - 50 - budgets.VALIDATION_MARGIN * 3 - budgets.SAVE_SECONDS - 0.5
            self.assertFalse(budget.over())
            clock.time += 1.0
            self.assertTrue(budget.over())
            self.assertFalse(budgets.Budget(None).over())  # no --max-time: the clock only counts


class ResumeWithScheduleTest(unittest.TestCase):
    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def test_resume_is_exact_with_a_schedule_and_the_curve_shows_it(self):
        options = dict(max_steps=24, warmup_steps=5, decay="cosine", min_lr_ratio=0.2, weight_decay=0.1,
                       weight_drop=0.3, log_every=1)
        quiet_train(tiny(self.tmp, run="whole", **options))
        with sigterm_after(9):
            self.assertEqual(quiet_train(tiny(self.tmp, run="split", **options)), 128 + signal.SIGTERM)
        self.assertTrue(ckpts.latest(os.path.join(self.tmp, "ck", "split")).endswith("ckpt-9"))
        quiet_train(tiny(self.tmp), resume="split")
        whole, split = (ckpts.latest(os.path.join(self.tmp, "ck", run)) for run in ("whole", "split"))
        self.assertTrue(whole.endswith("ckpt-24") and split.endswith("ckpt-24"))
        assert_same_run(self, whole, split)
        curve = dict(read_scalars(os.path.join(self.tmp, "log", "whole", "train"))[logs.LEARNING_RATE])
        cfg = tiny(self.tmp, **options)
        for step in (1, 3, 5, 6, 15, 24):  # the rate of the update that made the step
            self.assertAlmostEqual(curve[step], schedule.learning_rate(cfg, step, 24), places=7)
        self.assertAlmostEqual(curve[24], 0.2 * cfg.lr, places=5)

    def test_max_time_plans_once_and_a_resumed_run_keeps_the_plan(self):
        options = dict(max_steps=0, max_time="30s", warmup_steps=5, decay="cosine", val_every=25,
                       checkpoint_every=100, keep=20, sample_every=1000)
        tick = 0.01 * 30 / 8  # the clock of an 8 s budget read at 0.01 s a call, stretched to the 30 s minimum
        with mock.patch("charrnn.budget.now", FakeClock(tick)):
            quiet_train(tiny(self.tmp, run="whole", **options))
        whole = ckpts.latest(os.path.join(self.tmp, "ck", "whole"))
        planned = int(checkpoint_tensors(whole, "progress/")["progress/planned_steps/.ATTRIBUTES/VARIABLE_VALUE"])
        self.assertGreater(planned, 60)  # planned after the calibration window (1.5 fake seconds)
        self.assertLess(planned, 400, planned)
        self.assertGreater(ckpts.step_of(whole), 400)  # after its plan, the run went on until the deadline
        steps = [step for step, _ in read_scalars(os.path.join(self.tmp, "log", "whole", "validation"))[logs.LOSS]]
        self.assertEqual(len(steps), len(set(steps)), steps)  # the plan's timing validation is not logged again
        with mock.patch("charrnn.budget.now", FakeClock(tick)), sigterm_after(50):
            quiet_train(tiny(self.tmp, run="split", **options))
        with mock.patch("charrnn.budget.now", FakeClock(tick / 2)):  # a faster machine: the plan must not change
            quiet_train(tiny(self.tmp), resume="split")
        assert_same_run(self, *(os.path.join(self.tmp, "ck", run, "ckpt-400") for run in ("whole", "split")))

    def test_the_plan_is_saved_when_it_is_made(self):
        # A process killed right after its plan, before the next scheduled checkpoint, resumes on that plan.
        options = dict(max_steps=0, max_time="30s", val_every=25, checkpoint_every=10, sample_every=1000)
        planned = []
        original = training.Trainer.train_step

        def killed_after_the_plan(trainer, x, y):
            original(trainer, x, y)
            if trainer.schedule_steps:  # planned at the step before: killed before the pieces of this one
                planned.append(trainer.schedule_steps)
                raise Killed

        with mock.patch("charrnn.budget.now", FakeClock(0.02)), \
                mock.patch.object(training.Trainer, "train_step", killed_after_the_plan), self.assertRaises(Killed):
            quiet_train(tiny(self.tmp, **options))
        with mock.patch("charrnn.budget.now", FakeClock(0.1)):  # a slower machine would plan fewer steps
            quiet_train(tiny(self.tmp), resume="r")
        last = ckpts.latest(os.path.join(self.tmp, "ck", "r"))
        saved = checkpoint_tensors(last, "progress/")["progress/planned_steps/.ATTRIBUTES/VARIABLE_VALUE"]
        self.assertEqual(int(saved), planned[0])

    def test_a_budget_spent_before_the_first_step_is_refused_and_leaves_no_new_run(self):
        def train(cfg, **kw):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                return training.train(cfg, started=budgets.now() - 60, **kw), err.getvalue()  # a start-up of 60 s

        with self.assertRaisesRegex(UserError, r"^--max-time 30s was spent before the first training step \(the "
                                               r"start-up took 0:01:0\d\): nothing was trained and no run was kept; "
                                               r"give a longer --max-time$"):
            train(tiny(self.tmp, max_steps=0, max_time="30s"))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["corpus"])  # neither ck/ nor log/ was left
        quiet_train(tiny(self.tmp, run="kept", max_steps=4))
        kept = os.path.join(self.tmp, "ck", "kept")
        with self.assertRaisesRegex(UserError, r"^--resume \S+ckpt-4: that run has spent its --max-time 30s"):
            train(tiny(self.tmp, max_steps=0, max_time="30s", run="fork"), resume=os.path.join(kept, "ckpt-4"),
                  given={"max_steps", "max_time", "run"})
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "fork")))
        code, err = train(tiny(self.tmp, max_steps=0, max_time="30s"), resume="kept",  # in the run's own folder
                          given={"max_steps", "max_time"})
        self.assertEqual(code, 0)
        self.assertIn("run kept has spent its --max-time 30s", err)
        self.assertTrue(os.path.exists(os.path.join(kept, "ckpt-4.index")))

    def test_a_time_budgeted_run_samples_by_the_clock(self):
        options = dict(max_steps=0, max_time="30s", val_every=25, checkpoint_every=1000, sample_every=1000)
        out = io.StringIO()
        with mock.patch("charrnn.budget.now", FakeClock(0.1)), mock.patch.object(training, "SAMPLE_SECONDS", 5.0), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            training.train(tiny(self.tmp, **options))
        steps = [int(step) for step in re.findall(r"^--- sample at step (\d+) ---$", out.getvalue(), re.M)]
        # the first at the first validation (or the plan's), then every 5 of the 30 fake seconds
        self.assertGreaterEqual(len(steps), 3, steps)
        self.assertLess(steps[0], 100, steps)
        self.assertFalse([step for step in steps if step % 1000 == 0])
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            training.train(tiny(self.tmp, run="steps", max_steps=60, val_every=25, sample_every=1000))
        self.assertNotIn("--- sample at step", out.getvalue())  # without --max-time: every --sample-every steps only

    def test_a_checkpoint_without_the_run_s_clock_resumes(self):
        # Checkpoints written before --max-time hold no clock or plan: they resume as they were.
        real = ckpts.training_checkpoint
        without_clock = lambda model, optimizer, progress, states, *rest: real(
            model, optimizer, {k: v for k, v in progress.items() if k not in budgets.CLOCK}, states, *rest)
        with mock.patch("charrnn.checkpoints.training_checkpoint", without_clock):
            quiet_train(tiny(self.tmp, run="old", max_steps=10))
        self.assertNotIn("progress/seconds/.ATTRIBUTES/VARIABLE_VALUE",
                         checkpoint_tensors(ckpts.latest(os.path.join(self.tmp, "ck", "old")), "progress/", clock=True))
        quiet_train(tiny(self.tmp, max_steps=20), resume="old", given={"max_steps"})
        quiet_train(tiny(self.tmp, run="whole", max_steps=20))
        assert_same_run(self, *(ckpts.latest(os.path.join(self.tmp, "ck", run)) for run in ("old", "whole")))


    def test_a_checkpoint_with_the_retired_counters_resumes(self):
        # Earlier versions also saved epoch, batch and nonfinite (the first two follow from the step).
        real = ckpts.training_checkpoint
        with_counters = lambda model, optimizer, progress, states, *rest: real(
            model, optimizer, {**progress, **{n: tf.Variable(7, dtype=tf.int64) for n in ckpts.RETIRED}}, states, *rest)
        with mock.patch("charrnn.checkpoints.training_checkpoint", with_counters):
            quiet_train(tiny(self.tmp, run="old", max_steps=10))
        self.assertIn("progress/epoch/.ATTRIBUTES/VARIABLE_VALUE",
                      checkpoint_tensors(ckpts.latest(os.path.join(self.tmp, "ck", "old")), "progress/"))
        quiet_train(tiny(self.tmp, max_steps=20), resume="old", given={"max_steps"})
        quiet_train(tiny(self.tmp, run="whole", max_steps=20))
        assert_same_run(self, *(ckpts.latest(os.path.join(self.tmp, "ck", run)) for run in ("old", "whole")))


class WeightDecayTest(unittest.TestCase):
    def test_adamw_shrinks_the_weight_matrices_alone_by_lr_times_decay(self):
        model = CharRNN(tiny_model_config(embedding=4), "fused")
        named = model.named_variables()
        for v in named.values():
            v.assign(tf.ones_like(v))
        optimizer = steps.make_optimizer(TrainConfig(lr=0.01, weight_decay=0.5), named)
        optimizer.apply([tf.zeros_like(v) for v in named.values()], list(named.values()))  # no gradient
        for name, v in named.items():
            expected = 1 - 0.01 * 0.5 if name.endswith("kernel") else 1.0  # biases and the embedding stay
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=name)
        self.assertIn("rnn_1/recurrent_kernel", [n for n in named if steps.decayed(n)])
        plain = steps.make_optimizer(TrainConfig(lr=0.01), named)
        plain.apply([tf.zeros_like(v) for v in named.values()], list(named.values()))
        np.testing.assert_allclose(named["readout/kernel"].numpy(), 1 - 0.01 * 0.5, rtol=1e-6)  # Adam: unchanged


if __name__ == "__main__":
    unittest.main()
