"""Generation from the command line (rnn_play.py), export, and what a console shows."""

import contextlib
import errno
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

from charrnn import catalog, checkpoints as ckpts, export, logs, runs
import rnn_play
from charrnn.config import SamplingConfig
import txt_utils
from test_suite.helpers import (CAN_MOUNT, RunCopyTest, play, quiet_train, read_scalars, set_mtimes, tf, tiny,
                                tmpfs, write)


class TestPlay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp_holder = tempfile.TemporaryDirectory()
        cls.tmp = cls.tmp_holder.name
        quiet_train(tiny(cls.tmp, run="first", max_steps=10))
        time.sleep(0.05)
        quiet_train(tiny(cls.tmp, run="second", max_steps=30))
        cls.ck = os.path.join(cls.tmp, "ck")

    @classmethod
    def tearDownClass(cls):
        cls.tmp_holder.cleanup()

    def test_export_generates_the_same_text_as_rnn_play_without_this_code(self):
        target = os.path.join(self.tmp, "exported")
        code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target, "--top-k", "5")
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(target, "assets", "vocab.json")))
        exported = tf.saved_model.load(target)
        text = exported.generate(prime=tf.constant("the cat"), length=tf.constant(200),
                                 temperature=tf.constant(0.9), seed=tf.constant(7, tf.int64))["text"]
        _, expected, _ = play("second", "--checkpoint-dir", self.ck, "--prime", "the cat", "-n", "200",
                              "--temperature", "0.9", "--top-k", "5", "--seed", "7")
        self.assertEqual("the cat" + text.numpy().decode(), expected)
        # step: the bare model, states in and out
        model, vocab, _, _ = catalog.load_for_generation("second", self.ck)
        ids = tf.constant(vocab.encode("a dog ran")[None].astype(np.int32))
        states = tf.zeros([2, 1, 16])
        out = exported.step(ids=ids, states=states)
        logits, _ = model(ids, list(states))
        np.testing.assert_allclose(out["logits"], logits, atol=1e-5)
        # a model built with the stock layers exports its weights through the fused twin
        stock, vocab, run_dir, _ = catalog.load_for_generation("second", self.ck, implementation="keras")
        export.export(stock, vocab, run_dir, SamplingConfig(top_k=5), os.path.join(self.tmp, "from-stock"))
        from_stock = tf.saved_model.load(os.path.join(self.tmp, "from-stock"))  # held: it owns the variables
        text_stock = from_stock.generate(prime=tf.constant("the cat"), length=tf.constant(200),
                                         temperature=tf.constant(0.9), seed=tf.constant(7, tf.int64))["text"]
        self.assertEqual(text_stock.numpy(), text.numpy())
        # the folder now exists: a second export refuses to write over it
        code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target)
        self.assertEqual(code, 2)
        self.assertIn("--export", err)
        self.assertEqual(err.count("\n"), 1)

    def test_the_exported_generate_refuses_what_rnn_play_refuses(self):
        target = os.path.join(self.tmp, "exported-checked")
        self.assertEqual(play("second", "--checkpoint-dir", self.ck, "--export", target)[0], 0)
        exported = tf.saved_model.load(target)

        def generate(length=10, temperature=1.0):
            return exported.generate(prime=tf.constant("the"), length=tf.constant(length),
                                     temperature=tf.constant(temperature), seed=tf.constant(1, tf.int64))["text"]

        self.assertEqual(len(generate().numpy()), 10)
        for temperature in (0.0, -1.0, float("nan")):
            with self.subTest(temperature=temperature), \
                    self.assertRaisesRegex(tf.errors.InvalidArgumentError, "temperature must be > 0 \\(not NaN\\)"):
                generate(temperature=temperature)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "length must be >= 0"):
            generate(length=-1)

    def test_an_export_that_fails_half_way_leaves_nothing(self):
        parent = os.path.join(self.tmp, "exports")
        target = os.path.join(parent, "new", "model")
        full = OSError(errno.ENOSPC, "No space left on device")
        with mock.patch.object(export.shutil, "copy", side_effect=full):  # after the SavedModel is written
            code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target)
        self.assertEqual(code, 2)
        self.assertRegex(err, r"^error: --export \S+/new/model: no space left on the disk \(nothing was written\); "
                              r"free some space or choose a folder on another disk\n$")
        self.assertFalse(os.path.exists(parent))  # nor the folders made for it
        os.makedirs(target)  # an empty folder is written into, and kept when that fails
        with mock.patch.object(export.tf.saved_model, "save", side_effect=PermissionError(13, "Permission denied")):
            code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target)
        self.assertRegex(err, r"^error: --export \S+: cannot write \(Permission denied\); choose another folder")
        self.assertEqual(os.listdir(parent), ["new"])
        self.assertEqual(os.listdir(os.path.dirname(target)), ["model"])
        self.assertEqual(os.listdir(target), [])

    @unittest.skipUnless(CAN_MOUNT, "needs root and mount -t tmpfs for a real full disk")
    def test_an_export_onto_a_full_disk_leaves_nothing(self):
        disk = os.path.join(self.tmp, "small-disk")
        with tmpfs(disk, "192k"):
            code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", os.path.join(disk, "model"))
            self.assertEqual(code, 2, err)
            self.assertRegex(err, r"^error: --export \S+/model: no space left on the disk .*\n$")
            self.assertEqual(os.listdir(disk), [])

    def test_a_run_with_only_its_best_checkpoint_is_played_from_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            quiet_train(tiny(tmp, run="young", max_steps=20))
            run_dir = os.path.join(tmp, "ck", "young")
            for name in os.listdir(run_dir):  # as before its first regular checkpoint
                if name.startswith("ckpt-") or name == "checkpoint":
                    os.remove(os.path.join(run_dir, name))
            best = tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
            self.assertIsNotNone(best)
            for spec in (None, "young", run_dir):
                self.assertEqual(catalog.resolve(spec, os.path.join(tmp, "ck")), (Path(run_dir), best))
            code, out, err = play("--checkpoint-dir", os.path.join(tmp, "ck"), "-n", "30")
            self.assertEqual((code, len(out)), (0, 30), err)

    def test_length_is_exact_and_the_newest_run_s_best_checkpoint_is_the_default(self):
        code, out, err = play("--checkpoint-dir", self.ck, "-n", "300", "--seed", "1")
        self.assertEqual(code, 0)
        self.assertEqual(len(out), 300)
        best = ckpts.latest(os.path.join(self.ck, "second", "best"))
        self.assertIn(f"generating from {best} (the run's best by validation loss), seed 1\n", err)

    def test_same_seed_same_text_across_processes(self):
        args = ["first", "--checkpoint-dir", self.ck, "-n", "400", "--seed", "5", "--temperature", "1.5"]
        _, here, _ = play(*args)
        other = subprocess.run([sys.executable, "rnn_play.py", *args], capture_output=True, text=True, timeout=120)
        self.assertEqual(other.returncode, 0, other.stderr)
        self.assertEqual(other.stdout, here)
        _, different, _ = play(*args[:-3], "6", "--temperature", "1.5")
        self.assertNotEqual(different, here)

    def test_list_shows_the_runs_newest_first(self):
        broken = os.path.join(self.ck, "broken")
        self.addCleanup(shutil.rmtree, broken, True)
        shutil.copytree(os.path.join(self.ck, "first"), broken)
        write(os.path.join(broken, "checkpoint"), "model_checkpoint_path: \x00{{")
        set_mtimes(broken, (1e9, 1e9))  # written before the others
        code, out, err = play("--list", "--checkpoint-dir", self.ck)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["second", "first", "broken"])
        best = re.search(r"gru 2x16 +data \S+/corpus/\*\.txt +step 30 +best validation (\d\.\d{3}) nats "
                         r"\((\d\.\d{3}) bits/char\)$", lines[0])
        self.assertIsNotNone(best, lines[0])  # nats first, as everywhere else
        self.assertAlmostEqual(float(best.group(2)), float(best.group(1)) / math.log(2), delta=0.002)
        self.assertRegex(lines[1], r"step 10 ")
        self.assertRegex(lines[2], r"cannot be read: .*broken/checkpoint is damaged")

    def test_choosing_a_checkpoint(self):
        run_dir = os.path.join(self.ck, "first")
        for spec, expected in (("first", "first/best/ckpt-10"), (run_dir, "first/best/ckpt-10"),
                               (os.path.join(self.ck, "second", "ckpt-20"), "second/ckpt-20"),
                               (os.path.join("second", "ckpt-20"), "second/ckpt-20"),  # under --checkpoint-dir
                               (os.path.join(self.ck, "second", "best"), "second/best/ckpt-")):
            with self.subTest(spec=spec):
                code, out, err = play(spec, "--checkpoint-dir", self.ck, "-n", "20", "--seed", "1")
                self.assertEqual(code, 0, err)
                self.assertIn(expected, err)
                self.assertEqual(len(out), 20)

    def test_prime_is_echoed_and_unknown_characters_are_named(self):
        code, out, err = play("second", "--checkpoint-dir", self.ck, "-n", "50", "--prime", "the Zéat",
                              "--seed", "2")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("the Zéat"))
        self.assertEqual(len(out), len("the Zéat") + 50)
        self.assertRegex(err, r"warning: .*read as unknown: 'Z', 'é'\n")

    def test_eval_scores_a_text_as_the_run_s_validation_does(self):
        corpus = txt_utils.read_corpus(tiny(self.tmp).data)  # the text the run validated on, as a file
        held_out = os.path.join(self.tmp, "held-out.txt")
        write(held_out, corpus.vocab.decode(corpus.valid))
        code, out, err = play("second", "--checkpoint-dir", self.ck, "--eval", held_out)
        self.assertEqual(code, 0, err)
        validation = dict(read_scalars(os.path.join(self.tmp, "log", "second", "validation")))
        loss, bits, accuracy = map(float, re.fullmatch(r"loss (\S+) nats/char  (\S+) bits/char  accuracy (\S+)%\n", out).groups())
        best = ckpts.step_of(ckpts.latest(os.path.join(self.ck, "second", "best")))  # the checkpoint played
        self.assertAlmostEqual(loss, dict(validation[logs.LOSS])[best], places=4)
        self.assertAlmostEqual(accuracy / 100, dict(validation[logs.ACCURACY])[best], places=4)
        self.assertIn(f"second/best/ckpt-{best} (the run's best by validation loss): ", err)
        self.assertAlmostEqual(bits, loss / np.log(2), places=3)
        self.assertIn(f"{len(corpus.valid) - 1:,} characters predicted, 0 of", err)
        write(held_out, "the cat sat on the ñat ü.\n")  # two characters the run never saw
        code, out, err = play("second", "--checkpoint-dir", self.ck, "--eval", held_out)
        self.assertEqual(code, 0, err)
        self.assertIn("25 characters predicted, 2 of the text's 26 outside the run's vocabulary", err)
        self.assertEqual(play("second", "--checkpoint-dir", self.ck, "--eval", held_out, "--export", "x")[0], 2)

    def test_eval_reads_standard_input_and_named_pipes(self):
        text = "the cat sat on the log.\n" * 20
        path = os.path.join(self.tmp, "eval-file.txt")
        write(path, text)
        code, expected, err = play("second", "--checkpoint-dir", self.ck, "--eval", path)
        self.assertEqual(code, 0, err)
        with mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode()))):
            code, out, err = play("second", "--checkpoint-dir", self.ck, "--eval", "-")
        self.assertEqual((code, out), (0, expected), err)
        self.assertIn("scored - with ", err)
        fifo = os.path.join(self.tmp, "eval-fifo")
        os.mkfifo(fifo)
        self.addCleanup(os.remove, fifo)
        writer = threading.Thread(target=write, args=(fifo, text))
        writer.start()
        code, out, err = play("second", "--checkpoint-dir", self.ck, "--eval", fifo)
        writer.join(60)
        self.assertEqual((code, out), (0, expected), err)
        for stdin, argv, message in ((b"", ["--eval", "-"], r"every file matched by 'standard input' was empty"),
                                     (b"\xff\xfe", ["--eval", "-"], r"standard input: invalid UTF-8 at byte 0"),
                                     (b"a", ["--eval", "-", "--prime-file", "-"], r"--prime-file does nothing with --eval")):
            with self.subTest(argv=argv), mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin))):
                code, _, err = play("second", "--checkpoint-dir", self.ck, *argv)
                self.assertEqual(code, 2)
                self.assertRegex(err, f"^error: {message}.*\n$")

    def test_long_priming_and_scoring_show_progress_on_a_terminal(self):
        class Terminal(io.StringIO):
            def isatty(self):
                return True

        path = os.path.join(self.tmp, "long.txt")
        write(path, "the cat sat on the mat.\n" * 400)
        for argv, shown in ((["--prime-file", path, "-n", "5"], "reading the prime:"),
                            (["--eval", path], f"scoring {path}:")):
            with self.subTest(argv=argv):
                err = Terminal()
                with mock.patch.object(rnn_play, "PROGRESS_DELAY", 0), contextlib.redirect_stderr(err), \
                        contextlib.redirect_stdout(io.StringIO()):
                    self.assertEqual(rnn_play.main(["second", "--checkpoint-dir", self.ck, *argv]), 0)
                self.assertRegex(err.getvalue(), re.escape(shown) + r" +\d+%\|")
                _, _, plain = play("second", "--checkpoint-dir", self.ck, *argv)  # not a terminal: no bar
                self.assertNotIn(shown, plain)

    def test_prime_file(self):
        path = os.path.join(self.tmp, "prime.txt")
        write(path, "the dog ")
        code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "10", "--prime-file", path)
        self.assertEqual((code, out[:8], len(out)), (0, "the dog ", 18))
        with mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO("\ufeffthe cat ".encode()))):  # - is stdin
            code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "10", "--prime-file", "-")
        self.assertEqual((code, out[:8], len(out)), (0, "the cat ", 18))

    def test_samples_are_independent(self):
        code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "80", "--samples", "3",
                            "--seed", "3", "--temperature", "2")
        self.assertEqual(code, 0)
        samples = out.split("--- sample ")[1:]
        self.assertEqual(len(samples), 3)
        self.assertEqual(len(set(samples[i].split("\n", 1)[1] for i in range(3))), 3)

    def test_errors_exit_2_with_one_line(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty, exist_ok=True)
        not_a_checkpoint = os.path.join(self.tmp, "corpus", "part0.txt")
        cases = [(["--checkpoint-dir", empty], "no trained checkpoint found.*rnn_train.py --preset quick"),
                 ([not_a_checkpoint, "--checkpoint-dir", self.ck], ".*part0.txt is not a run name"),
                 (["--checkpoint-dir", self.ck, "--temperature", "0"], "--temperature must be a number > 0"),
                 (["--checkpoint-dir", self.ck, "--top-p", "0"], "--top-p"),
                 (["--checkpoint-dir", self.ck, "--top-p", "1.5"], "--top-p"),
                 (["--checkpoint-dir", self.ck, "--top-k", "0"], "--top-k must be >= 1"),
                 (["--checkpoint-dir", self.ck, "--prime", "a", "--prime-file", "-"], "--prime and --prime-file"),
                 (["--checkpoint-dir", self.ck, "--samples", "100000000"], "--samples must be at most 10,000"),
                 (["--checkpoint-dir", self.ck, "--export", ""], "--export needs the name of a new folder"),
                 (["--checkpoint-dir", self.ck, "--export-web", self.ck],
                  f"--export-web {re.escape(self.ck)}: exists and is not an empty folder; name a new folder$"),
                 (["--checkpoint-dir", self.ck, "--export", not_a_checkpoint], "--export .*: exists and is not an empty"),
                 (["--checkpoint-dir", self.ck, "--export", os.path.join(not_a_checkpoint, "x")],
                  f"--export .*: {re.escape(not_a_checkpoint)} is a file, not a folder"),
                 (["--checkpoint-dir", self.ck, "--eval", "x", "--temperature", "0.5"],
                  r"--temperature does nothing with --eval; drop it"),
                 (["--checkpoint-dir", self.ck, "--export", "x", "-n", "9", "--seed", "1"],
                  r"--length, --seed do nothing with --export \(the SavedModel's generate takes"),
                 (["--checkpoint-dir", self.ck, "--export-web", "x", "--samples", "2"], "--samples does nothing"),
                 (["--checkpoint-dir", self.ck, "--web-weights", "int8"], "--web-weights does nothing when generating"),
                 (["--checkpoint-dir", self.ck, "--list", "second"], "RUN_OR_CHECKPOINT does nothing with --list"),
                 (["--checkpoint-dir", self.ck, "--eval", "x", "--export-web", "y"],
                  "--eval, --export-web are given together; pass one of them"),
                 (["--checkpoint-dir", self.ck, "--export-web", "x", "--temperature", "inf"],
                  r"--temperature must be a number > 0 \(got inf\)"),
                 (["--checkpoint-dir", self.ck, "--export-web", "n" * 300 + "/page"], r"--export-web n+: File name too long"),
                 (["--checkpoint-dir", self.ck, "--prime", "", "--prime-file", "x"], "--prime and --prime-file are both"),
                 (["--checkpoint-dir", self.ck, "--export", "x", "--web-weights", "int8"],
                  r"--web-weights does nothing with --export; drop it"),
                 (["--checkpoint-dir", self.ck, "--argmax", "--temperature", "0.5", "--seed", "1"],
                  r"--seed, --temperature do nothing with --argmax, which always takes the most likely character"),
                 (["--checkpoint-dir", self.ck, "--export", "x", "--argmax", "--top-k", "3"],
                  r"--top-k does nothing with --argmax"),
                 (["--checkpoint-dir", self.ck, "--export-web", "page", "--seed", str(2 ** 53)],
                  "--seed 9007199254740992 is too large for a web page"),
                 (["--checkpoint-dir", self.ck, "--export-web", "page", "--seed", str(2 ** 60)],
                  "--seed 1152921504606846976 is too large for a web page")]
        for argv, message in cases:
            with self.subTest(argv=argv):
                code, out, err = play(*argv)
                self.assertEqual(code, 2)
                self.assertRegex(err, "^error: " + message)
                self.assertEqual(err.count("\n"), 1)

    def test_streaming_into_head_ends_cleanly(self):
        proc = subprocess.Popen([sys.executable, "rnn_play.py", "second", "--checkpoint-dir", self.ck, "-n", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.read(2000)  # arrives while generation goes on: it streams
        proc.stdout.close()  # what `head` does once it has enough
        err = proc.stderr.read().decode()
        proc.stderr.close()
        proc.wait(timeout=60)
        self.assertEqual(len(first), 2000)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("Traceback", err)


class TestConsole(unittest.TestCase):
    def test_train_and_play_on_an_ascii_console_with_unicode_text(self):
        """A console that cannot show a character prints '?' instead of crashing."""
        with tempfile.TemporaryDirectory() as tmp:
            corpus = os.path.join(tmp, "unicode.txt")
            write(corpus, ("naïve café — ☃ Ελληνικά 日本語 🎭\n" * 200).encode())
            env = {**os.environ, "PYTHONIOENCODING": "ascii"}
            train = subprocess.run(
                [sys.executable, "rnn_train.py", "--data", corpus, "--validation", "tail", "--layers", "1",
                 "--units", "16", "--seqlen", "8", "--batch-size", "4", "--max-steps", "20", "--val-every", "10",
                 "--sample-every", "10", "--checkpoint-dir", os.path.join(tmp, "ck"),
                 "--log-dir", os.path.join(tmp, "log"), "--run", "u"],
                capture_output=True, text=True, encoding="ascii", errors="strict", env=env, timeout=300)
            self.assertEqual(train.returncode, 0, train.stderr)
            self.assertNotIn("Traceback", train.stderr)
            self.assertIn("?", train.stdout)  # the samples' non-ASCII characters
            play = subprocess.run(
                [sys.executable, "rnn_play.py", "u", "--checkpoint-dir", os.path.join(tmp, "ck"),
                 "--prime", "naïve ☃ Ü€", "-n", "50"],
                capture_output=True, text=True, encoding="ascii", errors="strict", env=env, timeout=300)
            self.assertEqual(play.returncode, 0, play.stderr)
            self.assertTrue(play.stdout.startswith("na?ve ? ??"), play.stdout)
            # The characters the model never saw, named by code point rather than as '??'.
            self.assertIn("read as unknown: U+00DC, U+20AC\n", play.stderr)

    def test_characters_a_console_cannot_show_are_named_by_code_point(self):
        self.assertEqual(rnn_play.printable(["Z", "é", "\x07", "😀"], "ascii"), "'Z', U+00E9, '\\x07', U+1F600")
        self.assertEqual(rnn_play.printable(["Z", "é"], "utf-8"), "'Z', 'é'")
        self.assertEqual(rnn_play.printable(["é", "€"], "cp1252"), "'é', '€'")


def rotate(folder):
    """What a run training with --keep 1 does to folder: its newest checkpoint saved 10 steps
    later, the index rewritten, the old one deleted; returns the old step."""
    step = ckpts.step_of(ckpts.latest(folder))
    for path in Path(folder).glob(f"ckpt-{step}.*"):
        shutil.copy(path, str(path).replace(f"ckpt-{step}", f"ckpt-{step + 10}"))
    write(os.path.join(folder, "checkpoint"), f'model_checkpoint_path: "ckpt-{step + 10}"\n')
    for path in Path(folder).glob(f"ckpt-{step}.*"):
        path.unlink()
    return step


class LiveRunTest(RunCopyTest):
    def play_while_rotated(self, spec, times, *flags):
        """rnn_play.py spec, the checkpoint it picked rotated away `times` times just
        before it is read; (exit code, stdout, stderr, the steps it picked)."""
        restore, picked = ckpts.restore, []

        def rotated_then_restored(checkpoint, prefix, **kwargs):
            picked.append(ckpts.step_of(prefix))
            if len(picked) <= times:
                rotate(Path(prefix).parent)
            return restore(checkpoint, prefix, **kwargs)

        with mock.patch.object(ckpts, "restore", rotated_then_restored):
            return *play(spec, "--checkpoint-dir", self.ck, *flags), picked

    def test_a_checkpoint_rotated_away_while_it_is_read_gives_way_to_the_newest(self):
        run_dir = self.copy()
        best = ckpts.step_of(ckpts.latest(os.path.join(run_dir, "best")))
        code, out, err, picked = self.play_while_rotated("r", 3, "-n", "10")
        self.assertEqual((code, len(out)), (0, 10), err)
        self.assertEqual(picked, [best, best + 10, best + 20, best + 30])
        self.assertIn(f"{run_dir}/best/ckpt-{best + 30} (the run's best", err)
        shutil.rmtree(os.path.join(run_dir, "best"))  # the newest, when there is no best
        held_out = os.path.join(self.tmp, "corpus", "part0.txt")
        code, out, err, picked = self.play_while_rotated("r", 1, "--eval", held_out)
        self.assertEqual(code, 0, err)
        self.assertEqual(picked, [20, 30])
        self.assertIn(f"with {run_dir}/ckpt-30 (the run's newest: it has no best/ checkpoint): ", err)

    def test_a_checkpoint_rotated_away_at_every_try_is_said_so(self):
        run_dir = self.copy()
        for spec in ("r", "r/ckpt-20"):
            with self.subTest(spec=spec):
                code, _, err, picked = self.play_while_rotated(spec, 100, "-n", "10")
                self.assertEqual(code, 2)
                self.assertRegex(err, r"^error: \S+/ckpt-\d+ was rotated away \(deleted by the run training into "
                                      r"\S+/r, which keeps only its newest checkpoints\) while it was being read; "
                                      r"try again.*\n$")
                self.assertNotIn("damaged", err)
                self.assertEqual(len(picked), catalog.READ_TRIES if spec == "r" else 1)

    def test_a_run_plays_from_its_best_checkpoint_and_resumes_from_its_newest(self):
        run_dir = self.copy()
        best = os.path.join(run_dir, "best")
        for path in Path(best).glob("ckpt-*"):  # the best is now step 10, the newest step 20
            path.unlink()
        for path in Path(run_dir).glob("ckpt-10.*"):
            shutil.copy(path, best)
        write(os.path.join(best, "checkpoint"), 'model_checkpoint_path: "ckpt-10"\n')
        held_out = os.path.join(self.tmp, "corpus", "part0.txt")
        for flags in (["-n", "5"], ["--eval", held_out], ["--export", os.path.join(self.tmp, "exported")]):
            with self.subTest(flags=flags):
                code, _, err = play("r", "--checkpoint-dir", self.ck, *flags)
                self.assertEqual(code, 0, err)
                self.assertIn(f" {best}/ckpt-10 (the run's best by validation loss)", err)
        for spec, read in (("r/ckpt-20", f"{run_dir}/ckpt-20, seed"), ("r/best", f"{best}/ckpt-10 (the run's best")):
            code, _, err = play(spec, "--checkpoint-dir", self.ck, "-n", "5")
            self.assertEqual(code, 0, err)
            self.assertIn(f"generating from {read}", err)
        with contextlib.redirect_stderr(io.StringIO()):
            resumed = runs.open_run(self.cfg(), resume="r")
        self.assertTrue(resumed.prefix.endswith(f"{os.sep}r{os.sep}ckpt-20"))
