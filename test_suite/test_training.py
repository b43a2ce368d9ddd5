"""The training loop (training.py, rnn_train.py): learning, exact resume, refusals, signals, logs."""

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import keras
import numpy as np

from charrnn import checkpoints as ckpts, cli, lock, logs, run_files, steps, training
from charrnn.config import flag
from charrnn.errors import UserError
from charrnn.model import CharRNN
from test_suite.helpers import (V, checkpoint_tensors, copy_weights, play, mean_loss, quiet_train, random_ids,
                                read_layout, read_scalars, read_texts, tf, tiny, tiny_model_config, write)


class TrainStepTest(unittest.TestCase):
    """The compiled training step (steps.make_train_step) and training through the model."""

    def test_the_training_step_gives_adam_dense_gradients(self):
        # Keras's Adam squares an IndexedSlices gradient (a row gather's or an
        # embedding's) row by row before summing repeated ids: not Adam's second
        # moment. The step on the fused model must equal Adam on dense gradients
        # of the stock model.
        for embedding in (0, 4):
            with self.subTest(embedding=embedding):
                config = tiny_model_config(embedding=embedding)
                fused, stock = CharRNN(config, "fused"), CharRNN(config, "keras")
                copy_weights(fused, stock)
                ids, y = random_ids(64, 6), random_ids(64, 6, seed=5)
                states = [tf.Variable(s) for s in fused.initial_states(64)]
                variables = list(fused.named_variables().values())
                adam = keras.optimizers.Adam(1e-2)
                adam.build(variables)
                step = steps.make_train_step(fused, adam, variables, states, clip_norm=5.0)
                reference, optimizer = list(stock.named_variables().values()), keras.optimizers.Adam(1e-2)
                stock_states = stock.initial_states(64)
                for _ in range(2):
                    step(ids, y)
                    with tf.GradientTape() as tape:
                        logits, stock_states = stock(ids, stock_states, training=True)
                        loss = mean_loss(y, logits)
                    grads, _ = tf.clip_by_global_norm([tf.convert_to_tensor(g) for g in tape.gradient(loss, reference)], 5.0)
                    optimizer.apply(grads, reference)
                for name, v, r in zip(fused.named_variables(), variables, reference):
                    np.testing.assert_allclose(v, r, atol=1e-5, err_msg=name)

    def test_compiled_training_step_with_unknown_sequence_length(self):
        # A tf.function that relaxed its shapes takes the tf.scan path; it must match.
        model = CharRNN(tiny_model_config(), "fused")
        ids = random_ids(4, 5)
        unrolled, _ = model(ids)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def step(x):
            with tf.GradientTape() as tape:
                logits, _ = model(x, training=True)
                loss = mean_loss(x, logits)
            return logits, tape.gradient(loss, model.trainable_variables)

        logits, grads = step(ids)
        np.testing.assert_allclose(logits, unrolled, atol=1e-5)
        self.assertTrue(all(g is not None for g in grads))

    def test_compiled_training_step_with_unknown_batch_size(self):
        # A known length and an unknown batch takes the hand-written GRU; it must trace and match.
        for embedding in (0, 8):  # one-hot input and embedded input
            with self.subTest(embedding=embedding):
                model = CharRNN(tiny_model_config(embedding=embedding), "fused")
                ids = random_ids(4, 5)
                with tf.GradientTape() as tape:
                    logits, _ = model(ids, training=True)
                    loss = mean_loss(ids, logits)
                known = tape.gradient(loss, model.trainable_variables)

                @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.int32)])
                def step(x):
                    with tf.GradientTape() as tape:
                        logits, _ = model(x, training=True)
                        loss = mean_loss(x, logits)
                    return tape.gradient(loss, model.trainable_variables)

                for g, k in zip(step(ids), known):
                    np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(k), atol=1e-6)

    def test_training_step_learns_and_carries_state(self):
        model = CharRNN(tiny_model_config(dropout=0.1), "fused")
        optimizer = keras.optimizers.Adam(1e-2)
        # Each row counts up modulo V from a random start: predictable from the previous id.
        ids = (random_ids(64, 1) + tf.range(8)) % V
        x, y = ids[:, :-1], ids[:, 1:]

        @tf.function(reduce_retracing=True)
        def train_step(x, y, states):
            with tf.GradientTape() as tape:
                logits, states = model(x, states, training=True)
                loss = mean_loss(y, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            grads, _ = tf.clip_by_global_norm(grads, 5.0)
            optimizer.apply(grads, model.trainable_variables)
            return loss, states

        states = model.initial_states(64)
        losses = []
        for _ in range(45):
            loss, states = train_step(x, y, states)
            losses.append(float(loss))
        self.assertLess(losses[-1], 0.5 * losses[0])
        self.assertEqual(states[0].shape, (64, 8))
        # The returned state is carried: the next call continues from it, not from zeros.
        self.assertGreater(float(tf.reduce_max(tf.abs(states[0]))), 0.0)
        carried, _ = model(x, states)
        cold, _ = model(x, model.initial_states(64))
        self.assertFalse(np.allclose(carried, cold, atol=1e-4))


class ValidationTest(unittest.TestCase):
    def test_every_character_is_scored_once_from_a_zero_state_per_row(self):
        model = CharRNN(tiny_model_config(), "fused")
        codes = np.random.default_rng(0).integers(0, V, 3000)
        loss, accuracy = steps.make_validate(model, seqlen=64)(codes)
        # 2,999 predictions in 2 rows of 24 chunks of 64, the second row padded at its end
        rows = [(codes[:1536], codes[1:1537]), (codes[1536:-1], codes[1537:])]
        ce, correct = 0.0, 0.0
        whole_row = tf.function(lambda x: model(x)[0], input_signature=[tf.TensorSpec([1, None], tf.int32)])
        for x, y in rows:
            logits = whole_row(tf.constant(x[None], tf.int32))  # the whole row in one call from a zero state
            ce += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y[None], logits)))
            correct += float(np.sum(np.argmax(logits[0], -1) == y))
        self.assertAlmostEqual(loss, ce / 2999, places=5)
        self.assertAlmostEqual(accuracy, correct / 2999, places=6)


class TestTraining(unittest.TestCase):
    def setUp(self):
        holder = tempfile.TemporaryDirectory()  # (enterContext needs Python 3.11)
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def test_loss_falls_on_learnable_text(self):
        quiet_train(tiny(self.tmp, max_steps=150, val_every=15, dropout=0.0, units=32))
        events = read_scalars(os.path.join(self.tmp, "log", "r", "validation"))
        losses = [v for _, v in events[logs.LOSS]]
        self.assertLess(losses[-1], 0.5 * losses[0])
        self.assertLess(losses[-1], 1.0)  # nats/char: the text is nearly deterministic

    def test_resume_is_exact(self):
        """2N steps in one go == N steps, stop, --resume, N more: bit for bit."""
        quiet_train(tiny(self.tmp, run="whole", max_steps=24))
        quiet_train(tiny(self.tmp, run="split", max_steps=12))
        quiet_train(tiny(self.tmp, max_steps=24), resume="split", given={"max_steps"})
        whole = ckpts.latest(os.path.join(self.tmp, "ck", "whole"))
        split = ckpts.latest(os.path.join(self.tmp, "ck", "split"))
        self.assertTrue(whole.endswith("ckpt-24") and split.endswith("ckpt-24"))
        for section in ("weights/", "optimizer/", "rng/", "state/"):
            a, b = checkpoint_tensors(whole, section), checkpoint_tensors(split, section)
            self.assertTrue(a, section)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def test_resume_refuses_another_architecture(self):
        quiet_train(tiny(self.tmp, max_steps=5))
        with self.assertRaisesRegex(UserError, "--units 32 differs"):
            quiet_train(tiny(self.tmp, units=32), resume="r", given={"units"})

    def test_resume_refuses_changed_corpus_unless_allowed(self):
        quiet_train(tiny(self.tmp, max_steps=5))
        with open(os.path.join(self.tmp, "corpus", "part3.txt"), "a") as f:
            f.write("a new line.\n")
        with self.assertRaisesRegex(UserError, r"part3\.txt has changed"):
            quiet_train(tiny(self.tmp, max_steps=10), resume="r", given={"max_steps"})
        quiet_train(tiny(self.tmp, max_steps=10, allow_corpus_change=True), resume="r",
                    given={"max_steps", "allow_corpus_change"})
        self.assertTrue(ckpts.latest(os.path.join(self.tmp, "ck", "r")).endswith("ckpt-10"))

    def test_resume_newest_run(self):
        quiet_train(tiny(self.tmp, run="old", max_steps=4))
        time.sleep(0.05)
        quiet_train(tiny(self.tmp, run="new", max_steps=4))
        quiet_train(tiny(self.tmp, max_steps=8), resume="", given={"max_steps"})
        self.assertTrue(ckpts.latest(os.path.join(self.tmp, "ck", "new")).endswith("ckpt-8"))
        self.assertTrue(ckpts.latest(os.path.join(self.tmp, "ck", "old")).endswith("ckpt-4"))

    def test_resume_from_a_checkpoint_prefix_starts_a_new_run_exactly(self):
        quiet_train(tiny(self.tmp, max_steps=20))  # writes ckpt-10 and ckpt-20
        run_dir = os.path.join(self.tmp, "ck", "r")
        before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(run_dir)  # a prefix given from inside the run's folder names the new run after it
        quiet_train(tiny(self.tmp, run="", max_steps=20), resume="ckpt-10")
        os.chdir(self.tmp)
        fork = os.path.join(self.tmp, "ck", "r-from-10")
        self.assertTrue(ckpts.latest(fork).endswith("ckpt-20"))
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "log", "r-from-10", "train")))
        for section in ("weights/", "optimizer/", "rng/", "state/"):  # the same 10 steps again
            a = checkpoint_tensors(os.path.join(run_dir, "ckpt-20"), section)
            b = checkpoint_tensors(os.path.join(fork, "ckpt-20"), section)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        self.assertEqual({name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)},
                         before)  # the first run is untouched
        # by name under --checkpoint-dir, from the best folder, into a run named by --run
        quiet_train(tiny(self.tmp, run="again", max_steps=25), resume="r/best", given={"max_steps", "run"})
        self.assertTrue(ckpts.latest(os.path.join(self.tmp, "ck", "again")).endswith("ckpt-25"))
        with self.assertRaisesRegex(UserError, "r-from-10 already exists"):
            quiet_train(tiny(self.tmp, run="", max_steps=30), resume=os.path.join(run_dir, "ckpt-10"))
        with self.assertRaisesRegex(UserError, "--run names a new run.*--resume r/best or r/ckpt-N"):
            quiet_train(tiny(self.tmp, run="other", max_steps=30), resume="r", given={"run", "max_steps"})
        with self.assertRaisesRegex(UserError, "at step 20, already past the 20 steps"):
            quiet_train(tiny(self.tmp, run="late", max_steps=20), resume="r/ckpt-20", given={"run"})
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "late")))
        with self.assertRaisesRegex(UserError, "--resume r/ckpt-7: r/ckpt-7 is not a run name"):
            quiet_train(tiny(self.tmp, run="", max_steps=30), resume="r/ckpt-7")

    def test_relative_checkpoint_dir_resumes_and_plays(self):
        """The default `checkpoints/` is a relative path: resume and play must find its files."""
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        cfg = dataclasses.replace(tiny(self.tmp, max_steps=4), checkpoint_dir="ck", log_dir="log")
        quiet_train(cfg)
        self.assertEqual(ckpts.latest(os.path.join("ck", "r")), os.path.join("ck", "r", "ckpt-4"))
        quiet_train(dataclasses.replace(cfg, max_steps=8), resume="r", given={"max_steps"})
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "ck", "r", "ckpt-8.index")))
        code, out, err = play("r", "--checkpoint-dir", "ck", "-n", "20")
        self.assertEqual((code, len(out)), (0, 20), err)

    def test_new_run_never_overwrites_another(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        before = sorted(os.listdir(os.path.join(self.tmp, "ck", "r")))
        with self.assertRaisesRegex(UserError, "already exists.*--resume r"):
            quiet_train(tiny(self.tmp, max_steps=4))
        self.assertEqual(sorted(os.listdir(os.path.join(self.tmp, "ck", "r"))), before)

    def test_lock_refuses_a_second_trainer_and_reclaims_a_stale_lock(self):
        cfg = tiny(self.tmp, max_steps=4)
        run_dir = os.path.join(self.tmp, "ck", "r")
        os.makedirs(run_dir)
        with lock.RunLock(run_dir):
            with self.assertRaisesRegex(UserError, "being trained"):
                quiet_train(cfg)
        # A lock file left behind by a killed process holds no kernel lock: it is reclaimed.
        write(os.path.join(run_dir, run_files.LOCK), "pid 999999")
        quiet_train(cfg)
        self.assertTrue(ckpts.latest(run_dir).endswith("ckpt-4"))

    def test_unwritable_directories_fail_before_training(self):
        write(os.path.join(self.tmp, "a-file"), "x")
        for flag_name in ("checkpoint_dir", "log_dir"):
            cfg = tiny(self.tmp, **{flag_name: os.path.join(self.tmp, "a-file", "sub")})
            with self.assertRaisesRegex(UserError, "cannot write to .*a-file.*--" + flag_name.replace("_", "-")):
                quiet_train(cfg)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "r", "checkpoint")))

    def test_a_refused_run_leaves_no_folder_behind(self):
        ck, log = os.path.join(self.tmp, "new", "ck"), os.path.join(self.tmp, "new", "log")
        with self.assertRaisesRegex(UserError, "one batch needs"):
            quiet_train(tiny(self.tmp, checkpoint_dir=ck, log_dir=log, batch_size=100_000))
        self.assertEqual(os.listdir(os.path.join(self.tmp, "new")), [])

    def test_bad_values_are_refused_before_training(self):
        write(os.path.join(self.tmp, "ck", "a-file"), "x")
        for overrides, pattern in (
                (dict(seqlen=100000), r"one batch needs 400,001 training characters .* lower --batch-size or --seqlen"),
                (dict(run="a-file"), r"a-file is a file, not a run folder; choose another --run"),
                (dict(run="a/b"), r"--run 'a/b' must be a plain folder name"),
                (dict(run="-x"), r"--run '-x' must not start with '-' nor hold control characters"),
                (dict(run="a\x1b[31mb"), r"must not start with '-' nor hold control characters"),
                (dict(run="n" * 300), r"--run 'nnnn.*\.\.\.' is 300 bytes long; give a name of at most 200")):
            with self.subTest(overrides=overrides), self.assertRaisesRegex(UserError, pattern):
                quiet_train(tiny(self.tmp, **overrides))
        # the failed new run left no folders behind to block its name
        self.assertEqual(sorted(os.listdir(os.path.join(self.tmp, "ck"))), ["a-file"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "log", "r")))

    def test_resume_from_another_folder_names_the_run_s_folder(self):
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        ck = os.path.join(self.tmp, "ck")
        quiet_train(dataclasses.replace(tiny(self.tmp, max_steps=4), data=["corpus/*.txt"], checkpoint_dir=ck))
        os.makedirs("elsewhere")
        os.chdir("elsewhere")
        with self.assertRaisesRegex(UserError, r"no file matches 'corpus/\*\.txt'.*started in .*: resume it from there"):
            quiet_train(dataclasses.replace(tiny(self.tmp, max_steps=8), checkpoint_dir=ck), resume="r",
                        given={"max_steps", "checkpoint_dir"})

    def test_resume_past_max_steps_says_so(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = training.train(tiny(self.tmp, max_steps=2), resume="r", given={"max_steps"})
        self.assertEqual(code, 0)
        self.assertIn("already at step 4 of 2: nothing to train", err.getvalue())

    def test_resume_without_corpus_manifest_needs_allow_corpus_change(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        os.remove(os.path.join(self.tmp, "ck", "r", "corpus.json"))
        with self.assertRaisesRegex(UserError, r"corpus\.json is missing.*--allow-corpus-change"):
            quiet_train(tiny(self.tmp, max_steps=8), resume="r", given={"max_steps"})
        quiet_train(tiny(self.tmp, max_steps=8, allow_corpus_change=True), resume="r",
                    given={"max_steps", "allow_corpus_change"})
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "ck", "r", "ckpt-8.index")))

    def test_nonfinite_steps_are_skipped_then_stop_the_run(self):
        # An absurd learning rate drives the weights to ~1e38: the forward pass then overflows.
        cfg = tiny(self.tmp, lr=1e38, max_steps=100, checkpoint_every=1, max_nonfinite=5)
        with self.assertRaisesRegex(UserError, "diverged: 5 non-finite steps in a row"):
            quiet_train(cfg)
        run_dir = os.path.join(self.tmp, "ck", "r")
        prefixes = [p[:-6] for p in sorted(os.listdir(run_dir)) if p.endswith(".index")]
        self.assertTrue(prefixes)
        for prefix in prefixes:
            for name, value in checkpoint_tensors(os.path.join(run_dir, prefix), "").items():
                if getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
                    self.assertTrue(np.all(np.isfinite(value)), f"{prefix} {name}")

    def test_a_diverging_run_stops_with_an_error_and_never_becomes_best(self):
        # --lr 1e9 makes no step non-finite, but the loss soars far above a uniform guess.
        quiet_train(tiny(self.tmp, max_steps=10, val_every=10, checkpoint_every=10))
        run_dir = os.path.join(self.tmp, "ck", "r")
        with self.assertRaisesRegex(UserError, r"^training diverged: the (training|validation) loss at step 1\d is "
                                               r"\S+ nats a character, where a uniform guess over the \d+ characters "
                                               r"scores [\d.]+: the learning rate \(--lr 1e\+09\) is likely too "
                                               r"high; the last good checkpoint is \S+/ckpt-10; lower --lr"):
            quiet_train(tiny(self.tmp, lr=1e9, max_steps=40, val_every=1, checkpoint_every=1), resume="r",
                        given={"lr", "max_steps", "val_every", "checkpoint_every"})
        self.assertEqual(ckpts.step_of(ckpts.latest(os.path.join(run_dir, "best"))), 10)
        self.assertTrue(os.path.exists(os.path.join(run_dir, "ckpt-10.index")))  # the last good one is kept

    def test_tensorboard_tags(self):
        quiet_train(tiny(self.tmp, max_steps=20, sample_every=10))
        train = read_scalars(os.path.join(self.tmp, "log", "r", "train"))
        valid = read_scalars(os.path.join(self.tmp, "log", "r", "validation"))
        # TensorBoard orders its cards by tag: the loss first, then accuracy, speed, the optimizer.
        self.assertEqual(sorted(train), ["1_loss/loss", "1_loss/loss_in_bits_per_char", "2_accuracy/accuracy",
                                         "3_speed/chars_per_s", "3_speed/flop_rate_gflops",
                                         "4_optimizer/learning_rate"])
        self.assertEqual(sorted(valid), ["1_loss/loss", "1_loss/loss_in_bits_per_char", "2_accuracy/accuracy"])
        self.assertEqual([s for s, _ in valid["1_loss/loss"]], [10, 20])
        for (_, nats), (_, bits) in zip(valid["1_loss/loss"], valid["1_loss/loss_in_bits_per_char"]):
            self.assertAlmostEqual(bits, nats / np.log(2), places=5)
        # The Custom Scalars tab: the loss chart first, one chart per logged metric.
        layout = read_layout(os.path.join(self.tmp, "log", "r", "train"))
        first = layout.category[0].chart[0]
        self.assertEqual((layout.category[0].title, first.title),
                         ("learning", "loss in nats, training and validation"))
        self.assertEqual(list(first.multiline.tag), ["^1_loss/loss$"])
        charted = [re.fullmatch(chart.multiline.tag[0][1:-1], tag) is not None
                   for tag in train for category in layout.category for chart in category.chart]
        self.assertEqual(sum(charted), len(train))
        texts = read_texts(os.path.join(self.tmp, "log", "r", "train"))
        self.assertIn("sample", texts)
        config = texts["config"][0]
        self.assertIn("| units | 16 |", config)
        self.assertEqual(config.count("| units |"), 1)  # each setting once
        self.assertIn("| vocabulary | 19 symbols |", config)
        self.assertEqual(len(texts["sample"]), 2)


class TestThreadSettings(unittest.TestCase):
    def test_training_gives_each_op_half_the_cores_but_leaves_the_stock_layers_alone(self):
        from charrnn import tf_setup
        names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
        with mock.patch.dict(os.environ), mock.patch("os.sched_getaffinity", return_value=set(range(8))):
            for name in names:
                os.environ.pop(name, None)
            tf_setup.training_threads("keras")
            self.assertFalse(any(name in os.environ for name in names))
            tf_setup.training_threads("auto")
            self.assertEqual([os.environ[name] for name in names], ["4", "8"])
            os.environ["TF_NUM_INTRAOP_THREADS"] = "3"
            tf_setup.training_threads("fused")
            self.assertEqual(os.environ["TF_NUM_INTRAOP_THREADS"], "3")  # the user's setting wins


class TestSignals(unittest.TestCase):
    def test_sigterm_checkpoints_and_resume_is_exact(self):
        """Kill a run with SIGTERM mid-way, resume it: the result equals an uninterrupted run."""
        with tempfile.TemporaryDirectory() as tmp:
            cfg = tiny(tmp, max_steps=400, checkpoint_every=25, val_every=100, sample_every=1000)
            args = [sys.executable, "rnn_train.py", "--data", *cfg.data, "--layers", "2", "--units", "16",
                    "--seqlen", "8", "--batch-size", "4", "--lr", "0.01", "--max-steps", "400",
                    "--checkpoint-every", "25", "--val-every", "100", "--sample-every", "1000",
                    "--checkpoint-dir", os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log"), "--run", "k",
                    "--precision", cfg.precision]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            index = os.path.join(tmp, "ck", "k", "checkpoint")
            deadline = time.time() + 120
            while not os.path.exists(index) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 143, err)
            self.assertNotIn("Traceback", err)
            self.assertIn("continue with    " + cli.command("rnn_train.py", "--resume", "k", "--checkpoint-dir",
                                                         f"{tmp}/ck", "--log-dir", f"{tmp}/log"), err)
            stopped = int(ckpts.latest(os.path.dirname(index)).rsplit("-", 1)[1])
            self.assertLess(stopped, 400, "the run ended before the signal; the test proved nothing")
            resumed = subprocess.run([sys.executable, "rnn_train.py", "--resume", "k", "--checkpoint-dir",
                                      os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log"),
                                      "--precision", cfg.precision],
                                     capture_output=True, text=True, timeout=300)
            self.assertEqual(resumed.returncode, 0, resumed.stderr)
            quiet_train(dataclasses.replace(cfg, run="whole"))
            a = checkpoint_tensors(ckpts.latest(os.path.join(tmp, "ck", "k")))
            b = checkpoint_tensors(ckpts.latest(os.path.join(tmp, "ck", "whole")))
            for name in b:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def help_entries(text):
    """{'--flag METAVAR': its help text} from argparse's --help output, printed wide enough
    that each help text is one line, beside its flag or on the next line."""
    entries, invocation = {}, None
    for line in text.splitlines():
        if re.match(r"^  [-\w]", line):
            invocation, _, rest = line.strip().partition("  ")
            if rest.strip():
                entries[invocation], invocation = rest.strip(), None
        elif invocation and line.startswith("    "):
            entries[invocation], invocation = line.strip(), None
    return entries


class TestWhatTheUserSees(unittest.TestCase):
    def test_piped_output_has_training_lines_and_a_summary(self):
        with tempfile.TemporaryDirectory() as tmp:
            ck, log = os.path.join(tmp, "ck"), os.path.join(tmp, "log")
            args = [sys.executable, "rnn_train.py", "--data", *tiny(tmp).data, "--layers", "1", "--units", "16",
                    "--seqlen", "8", "--batch-size", "4", "--max-steps", "20", "--log-every", "5",
                    "--val-every", "10", "--sample-every", "100", "--checkpoint-dir", ck, "--log-dir", log,
                    "--run", "p"]
            r = subprocess.run(args, capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = [line for line in r.stdout.splitlines() if line.startswith("step ") and "chars/s" in line]
            self.assertEqual([line.split()[1] for line in lines], ["5/20", "10/20", "15/20", "20/20"])
            self.assertNotIn("val", lines[0])  # no validation yet
            self.assertRegex(lines[-1], r"^step 20/20  loss \d+\.\d{3}  val \d+\.\d{3}  [\d,]+ chars/s  "
                                        r"elapsed \d:\d\d:\d\d  left \d:\d\d:\d\d$")
            self.assertRegex(r.stdout, r"about \d:\d\d:\d\d for the 10 steps left")  # after the warm-up window
            self.assertRegex(r.stderr, r"done: step 20 of 20 in \d:\d\d:\d\d, [\d,]+ chars/s")
            self.assertRegex(r.stderr, r"training loss +\d+\.\d{4} nats \(\d+\.\d{3} bits/char\), mean of the "
                                       r"last 5 steps")
            best = re.search(r"best validation +\d+\.\d{4} nats \(\d+\.\d{3} bits/char\) at step (10|20)\n"
                             r" +best checkpoint +\S+/p/best/ckpt-(10|20)\n", r.stderr)
            self.assertIsNotNone(best, r.stderr)
            self.assertEqual(best.group(1), best.group(2))
            validations = [line for line in r.stdout.splitlines() if "validation" in line]
            self.assertEqual(len(validations), 2)
            for line in validations:  # fits an 80-column terminal
                self.assertRegex(line, r"^step +(10|20)  validation \d\.\d{4} nats, \d\.\d{3} bits/char, "
                                       r"\d+\.\d% right(  best)?$")
                self.assertLessEqual(len(line), 80)
            self.assertIn(cli.command("rnn_play.py", "p", "--checkpoint-dir", ck), r.stderr)
            self.assertIn(cli.tensorboard_command(log), r.stderr)

    def test_piped_lines_arrive_while_the_run_goes_on(self):
        """A log file shows each line at once: stopped as soon as its first line arrives, a run has
        written only a few more, not the ~100 lines of a block-buffered stdout."""
        with tempfile.TemporaryDirectory() as tmp:
            args = [sys.executable, "rnn_train.py", "--data", *tiny(tmp).data, "--layers", "1", "--units", "16",
                    "--seqlen", "8", "--batch-size", "4", "--max-steps", "1000000", "--log-every", "1",
                    "--val-every", "1000000", "--sample-every", "1000000", "--checkpoint-dir",
                    os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log"), "--run", "p"]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
            with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
                try:  # the with closes the pipes
                    first = proc.stdout.readline()
                finally:
                    proc.send_signal(signal.SIGTERM)
                    rest, err = proc.stdout.read(), proc.stderr.read()
                    proc.wait(timeout=120)
            self.assertRegex(first, r"^step 1/1000000  loss \d+\.\d{3}  [\d,]+ chars/s  elapsed \d:\d\d:\d\d  "
                                    r"left -:--:--$")  # no estimate yet from a window that compiled the step
            self.assertEqual(proc.returncode, 143, err)
            stopped = int(re.search(r"interrupted by signal 15 at step (\d+)", err).group(1))
            self.assertLess(stopped, 40)
            self.assertLess(len(rest.splitlines()), 40)

    def test_help_texts_say_why_and_show_each_default_once(self):
        metavars = {"N", "RATE", "NORM", "DIR", "NAME", "GLOB", "PATH", "TEXT", "T", "K", "P", "SECONDS",
                    "PYTHON", "SECTION", "RUN_OR_CHECKPOINT", "LIST", "FILE", "R", "W", "DURATION",
                    "FLAGS", "MB"}  # LIST: comma-separated names; FLAGS: a command line in one quoted string; MB: a size
        for script in ("rnn_train.py", "rnn_play.py", "benchmark.py"):
            with self.subTest(script=script):
                r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60,
                                   env={**os.environ, "COLUMNS": "1000"})  # one line per flag
                self.assertEqual(r.returncode, 0, r.stderr)
                flags = help_entries(r.stdout)
                self.assertGreater(len(flags), 5)
                for invocation, text in flags.items():
                    self.assertGreaterEqual(len(text.split()), 5, f"{invocation}: {text!r} says too little")
                    self.assertLessEqual(text.count("(default:"), 1, text)
                    for nothing in ("(default: None)", "(default: False)", "(default: )", "(default: [])"):
                        self.assertNotIn(nothing, text)
                    for word in re.findall(r"\b[A-Z][A-Z_]*\b", invocation):
                        self.assertIn(word, metavars, f"{script} {invocation}")
        play_help = help_entries(subprocess.run([sys.executable, "rnn_play.py", "--help"], capture_output=True,
                                                text=True, env={**os.environ, "COLUMNS": "1000"}).stdout)
        self.assertTrue(play_help["--top-k K"].endswith("(default: no limit)"))
        bench_help = help_entries(subprocess.run([sys.executable, "benchmark.py", "--help"], capture_output=True,
                                                 text=True, env={**os.environ, "COLUMNS": "1000"}).stdout)
        self.assertIn("(default: 10)", bench_help["--seconds SECONDS"])
        self.assertFalse({"--config", "--tmp", "--child"} & {i.split()[0] for i in bench_help})  # internal

    def test_a_preset_is_the_flags_it_stands_for(self):
        import rnn_train
        for name, (_, flags) in rnn_train.PRESETS.items():
            cfg, given, _ = rnn_train.parse(["--preset", name])
            typed = rnn_train.parse([arg for k, v in flags.items() for arg in (flag(k), str(v))])
            self.assertEqual((cfg, given), typed[:2])
        cfg, given, _ = rnn_train.parse(["--units", "128", "--preset", "quick", "--max-steps", "5"])
        self.assertEqual((cfg.layers, cfg.units, cfg.max_steps), (2, 128, 5))  # flags given with it win
        # The run saves the values, not the preset's name (sequences of 8: the step unrolled
        # over 64 traces for seconds).
        with tempfile.TemporaryDirectory() as tmp:
            ck = os.path.join(tmp, "ck")
            r = subprocess.run([sys.executable, "rnn_train.py", "--preset", "quick", "--data", *tiny(tmp).data,
                                "--units", "16", "--seqlen", "8", "--max-steps", "2", "--checkpoint-dir", ck,
                                "--log-dir", os.path.join(tmp, "log"), "--run", "q"],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(ck, "q", "config.json")) as f:
                saved = json.load(f)["training"]
            self.assertNotIn("preset", saved)
            self.assertEqual({k: saved[k] for k in ("layers", "units", "seqlen", "batch_size", "lr", "max_steps")},
                             dict(layers=2, units=16, seqlen=8, batch_size=64, lr=0.003, max_steps=2))

    def test_help_and_bad_flags_answer_before_tensorflow_loads(self):
        code = ("import sys, rnn_train, rnn_play; rnn_train.parse(['--layers', '2']); "
                "rnn_play.check(rnn_play.make_parser().parse_args(['-n', '5']), rnn_play.given_flags(['-n', '5'])); print('tensorflow' in sys.modules)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.stdout.strip(), "False", r.stderr)
        for script in ("rnn_train.py", "rnn_play.py"):
            r = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("usage:", r.stdout)
            self.assertNotIn("tensorflow", r.stderr)  # -X importtime lists every imported module
        r = subprocess.run([sys.executable, "-X", "importtime", "rnn_train.py", "--layers", "0"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("error: --layers must be >= 1 (got 0)", r.stderr)
        self.assertNotIn("tensorflow", r.stderr)


class SafeStepTest(unittest.TestCase):
    def test_a_step_that_would_make_the_weights_non_finite_changes_nothing(self):
        model = CharRNN(tiny_model_config(), "fused")
        variables = list(model.named_variables().values())
        optimizer = keras.optimizers.Adam(1e39)  # inf in float32: the loss and gradient are finite, the update is not
        optimizer.build(variables)
        states = [tf.Variable(s) for s in model.initial_states(4)]
        step = steps.make_train_step(model, optimizer, variables, states, clip_norm=5.0)
        changed_by_a_step = variables + list(optimizer.variables) + states
        before = [v.numpy() for v in changed_by_a_step]
        loss, _, finite = step(random_ids(4, 6), random_ids(4, 6, seed=5))
        self.assertTrue(np.isfinite(loss))
        self.assertFalse(bool(finite))
        for old, v in zip(before, changed_by_a_step):
            np.testing.assert_array_equal(v.numpy(), old, err_msg=v.name)


class ValidationScoringTest(unittest.TestCase):
    def test_validation_reads_at_most_val_chars_a_chunk_at_a_time_and_stops_when_asked(self):
        import tracemalloc

        class Uniform:  # a model that gives every character the same probability
            def __call__(self, x, states, training=False):
                return tf.zeros(tf.concat([tf.shape(x), [V]], 0)), states

            def initial_states(self, rows):
                return [tf.zeros([rows, 1])]

        codes = np.random.default_rng(0).integers(0, V, 2_000_001).astype(np.uint8)
        for max_chars, chunks in ((100_000, 16), (0, 313)):  # 64 rows of 1,600 or 31,300 chars (the last padded), by 100
            with self.subTest(max_chars=max_chars):
                validate, asked = steps.make_validate(Uniform(), 100, max_chars), []
                validate(codes[:200_000])  # traced outside the measurement
                tracemalloc.start()
                loss, _ = validate(codes, lambda: asked.append(1))
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                self.assertEqual(len(asked), chunks)
                self.assertLess(peak, 1_000_000)  # no int32 copy of the text (8 MB)
                self.assertAlmostEqual(loss, np.log(V), places=4)
        self.assertIsNone(validate(codes, lambda: True))

    def test_a_signal_during_validation_stops_it_and_nothing_is_logged(self):
        make_validate = steps.make_validate

        def signalled_during_validation(*args):
            validate = make_validate(*args)

            def signalled(*args):
                os.kill(os.getpid(), signal.SIGTERM)  # as if the user pressed Ctrl-C now
                return validate(*args)
            return signalled

        with tempfile.TemporaryDirectory() as tmp, \
                mock.patch.object(steps, "make_validate", signalled_during_validation):
            code = quiet_train(tiny(tmp, max_steps=40, val_every=10, sample_every=100))
            self.assertEqual(code, 128 + signal.SIGTERM)
            self.assertNotIn("loss", read_scalars(os.path.join(tmp, "log", "r", "validation")))
            self.assertEqual(ckpts.read_index(os.path.join(tmp, "ck", "r")), [10])


class KeepBestTest(unittest.TestCase):
    """plateau.KeepBest through the loop, on a tiny model whose validation losses are scripted
    (one a validation, every 10 steps): the decision, the final checkpoint, resume, --patience 0."""

    LOSSES = [3.0, 2.0, 1.5, 1.6, 1.499, 1.7, 1.45, 1.5]  # steps 10..80: no real gain after step 30

    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def train(self, cfg, resume=None, kill_at=None):
        """Train with the scripted losses (continuing where the last call left them); kill_at:
        a SIGTERM right after that validation, as if the user pressed Ctrl-C. (code, stdout)"""
        losses = self.losses

        def scripted(*args):
            def validate(valid, stop=None):
                self.calls += 1
                if self.calls == kill_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return next(losses), 0.5
            return validate

        out = io.StringIO()
        with mock.patch.object(steps, "make_validate", scripted), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = training.train(cfg, resume=resume)
        return code, out.getvalue()

    def run_folder(self, name):
        return os.path.join(self.tmp, "ck", name)

    def scenario(self, name, kill_at=None, **overrides):
        self.losses, self.calls = iter(self.LOSSES), 0
        cfg = tiny(self.tmp, run=name, **{**dict(max_steps=80, val_every=10, sample_every=1000, patience=3),
                                          **overrides})
        code, out = self.train(cfg, kill_at=kill_at)
        if kill_at:
            self.assertEqual(code, 128 + signal.SIGTERM)
            code, more = self.train(cfg, resume=name)
            out += more
        self.assertEqual(code, 0)
        return out

    def assert_same(self, a, b, sections=("weights/",)):
        for section in sections:
            x, y = checkpoint_tensors(a, section), checkpoint_tensors(b, section)
            self.assertTrue(x, section)
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{a} {b} {key}")

    def test_validation_that_stops_improving_ends_the_run_at_the_best_checkpoint(self):
        out = self.scenario("stop", plateau="stop")
        folder = self.run_folder("stop")
        self.assertEqual(ckpts.read_index(folder)[-1], 60)  # patience 3 after step 30: 40, 50 (1.499), 60
        self.assertIn("step 60: validation has not improved by 0.003 nats for 3 validations since step 30 "
                      "(best 1.4990 at step 50): ending early with the best checkpoint's weights", out)
        self.assert_same(ckpts.latest(folder), os.path.join(folder, "best", "ckpt-50"))

    def test_a_restart_goes_on_at_half_the_rate_and_a_resumed_run_decides_the_same(self):
        out = self.scenario("whole", plateau="restart")
        self.assertIn("step 60: validation has not improved by 0.003 nats for 3 validations since step 30 "
                      "(best 1.4990 at step 50): restart 1 of 2 from the best checkpoint, at 0.5x the "
                      "learning rate", out)
        self.assertIn("step 80: validation 1.5000 is above the best (best 1.4500 at step 70): the final "
                      "checkpoint holds the best checkpoint's weights", out)
        whole = self.run_folder("whole")
        self.assert_same(os.path.join(whole, "ckpt-80"), os.path.join(whole, "best", "ckpt-70"))
        self.assertEqual(checkpoint_tensors(os.path.join(whole, "ckpt-80"), "progress/lr_scale/")
                         ["progress/lr_scale/.ATTRIBUTES/VARIABLE_VALUE"], 0.5)
        for kill_at in (4, 7):  # before the restart, and after it
            with self.subTest(kill_at=kill_at):
                name = f"split{kill_at}"
                self.assertIn("restart 1 of 2", self.scenario(name, kill_at=kill_at, plateau="restart"))
                self.assert_same(os.path.join(whole, "ckpt-80"), os.path.join(self.run_folder(name), "ckpt-80"),
                                 ("weights/", "optimizer/", "rng/", "state/", "progress/"))

    def test_patience_0_trains_to_the_end_with_the_last_weights(self):
        out = self.scenario("off", patience=0)
        folder = self.run_folder("off")
        self.assertEqual(ckpts.read_index(folder)[-1], 80)
        self.assertNotIn("best checkpoint's weights", out)
        best, last = (checkpoint_tensors(p) for p in (os.path.join(folder, "best", "ckpt-70"), ckpts.latest(folder)))
        self.assertFalse(all(np.array_equal(best[k], last[k]) for k in best))

    def test_a_checkpoint_from_before_keep_best_resumes(self):
        real, keys = ckpts.training_checkpoint, ("improved_step", "improved_loss", "restarts", "lr_scale")
        without = lambda model, optimizer, progress, states, *rest: real(
            model, optimizer, {k: v for k, v in progress.items() if k not in keys}, states, *rest)
        with mock.patch("charrnn.checkpoints.training_checkpoint", without):
            quiet_train(tiny(self.tmp, run="old", max_steps=10))
        self.assertFalse(checkpoint_tensors(ckpts.latest(self.run_folder("old")), "progress/lr_scale/"))
        quiet_train(tiny(self.tmp, max_steps=20), resume="old", given={"max_steps"})
        quiet_train(tiny(self.tmp, run="whole", max_steps=20))
        self.assert_same(ckpts.latest(self.run_folder("old")), ckpts.latest(self.run_folder("whole")),
                         ("weights/", "optimizer/", "state/"))
