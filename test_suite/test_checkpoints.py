"""Checkpoint files (checkpoints.py): what they hold, and damage named in one line."""

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np

import run as runs
from errors import UserError
from model import CharRNN
from txt_utils import Vocabulary
from test_suite.helpers import flip_byte, quiet_train, random_ids, set_mtimes, tf, tiny, tiny_model_config, write


class CheckpointContentsTest(unittest.TestCase):
    def test_checkpoint_saves_named_and_rng_variables(self):
        model = CharRNN(tiny_model_config(dropout=0.5), "fused")
        checkpoint = tf.train.Checkpoint(**{n.replace("/", "."): v for n, v in {**model.named_variables(), **model.rng_variables()}.items()})
        with tempfile.TemporaryDirectory() as directory:
            path = checkpoint.write(f"{directory}/ckpt")
            other = CharRNN(tiny_model_config(dropout=0.5, seed=9), "keras")
            tf.train.Checkpoint(**{n.replace("/", "."): v for n, v in {**other.named_variables(), **other.rng_variables()}.items()}).read(path).assert_consumed()
        ids = random_ids(3, 4)
        np.testing.assert_allclose(model(ids)[0], other(ids)[0], atol=1e-5)


class TestCheckpointDamage(unittest.TestCase):
    """Every kind of damage gives one error naming the file, never a fresh start."""

    @classmethod
    def setUpClass(cls):
        cls.tmp_holder = tempfile.TemporaryDirectory()
        cls.tmp = cls.tmp_holder.name
        quiet_train(tiny(cls.tmp, max_steps=20))
        cls.pristine = os.path.join(cls.tmp, "pristine")
        shutil.copytree(os.path.join(cls.tmp, "ck", "r"), cls.pristine)

    @classmethod
    def tearDownClass(cls):
        cls.tmp_holder.cleanup()

    def damaged(self, damage):
        run_dir = os.path.join(self.tmp, "ck", "r")
        shutil.rmtree(run_dir)
        shutil.copytree(self.pristine, run_dir)
        damage(run_dir)
        return run_dir

    def assert_refused(self, run_dir, file_pattern):
        before = sorted(os.listdir(run_dir))
        with self.assertRaisesRegex(UserError, file_pattern) as cm:
            quiet_train(tiny(self.tmp, max_steps=30), resume="r", given={"max_steps"})
        self.assertNotIn("\n", str(cm.exception))
        with self.assertRaisesRegex(UserError, file_pattern):
            runs.load_for_generation("r", os.path.join(self.tmp, "ck"))
        self.assertEqual(sorted(os.listdir(run_dir)), before)

    def test_flipped_byte_in_data(self):
        def flip(run_dir):
            flip_byte(os.path.join(run_dir, "ckpt-20.data-00000-of-00001"), 2)
        self.assert_refused(self.damaged(flip), r"ckpt-20\.data-00000-of-00001 is damaged")

    def test_flipped_byte_in_index(self):
        def flip(run_dir):
            flip_byte(os.path.join(run_dir, "ckpt-20.index"), 3)
        self.assert_refused(self.damaged(flip), r"ckpt-20\.(index|data-00000-of-00001) is damaged")

    def test_truncated_data(self):
        def truncate(run_dir):
            path = os.path.join(run_dir, "ckpt-20.data-00000-of-00001")
            os.truncate(path, os.path.getsize(path) // 2)
        self.assert_refused(self.damaged(truncate), r"ckpt-20\.data-00000-of-00001 is damaged")

    def test_missing_data(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "ckpt-20.data-00000-of-00001")))
        self.assert_refused(run_dir, r"ckpt-20\.data-00000-of-00001 is missing")

    def test_missing_index(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "ckpt-20.index")))
        self.assert_refused(run_dir, r"ckpt-20\.index is missing")

    def test_damaged_checkpoint_index_file(self):
        run_dir = self.damaged(lambda d: write(os.path.join(d, "checkpoint"), "model_checkpoint_path: \x00\x01{{"))
        self.assert_refused(run_dir, r"r/checkpoint is damaged")

    def test_missing_checkpoint_index_file(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "checkpoint")))
        self.assert_refused(run_dir, r"r/checkpoint is missing")

    def test_damaged_config(self):
        run_dir = self.damaged(lambda d: write(os.path.join(d, "config.json"), "{not json"))
        self.assert_refused(run_dir, r"config\.json is damaged")

    def test_a_damaged_older_run_does_not_hide_the_newest(self):
        root = Path(self.tmp, "ck")
        self.damaged(lambda d: None)
        old = root / "old"
        self.addCleanup(shutil.rmtree, old, True)
        shutil.copytree(self.pristine, old)
        write(old / "checkpoint", "model_checkpoint_path: \x00\x01{{")
        set_mtimes(old, (1e9, 1e9))  # written long before r
        self.assertEqual(runs.newest_run(root), root / "r")
        self.assertEqual(runs.resolve(None, root)[0], root / "r")
        set_mtimes(old, None)  # now the damaged run is the newest: its index is named
        for find in (lambda: runs.newest_run(root), lambda: runs.resolve(None, root)):
            with self.assertRaisesRegex(UserError, r"old/checkpoint is damaged"):
                find()


class RunFilesTest(unittest.TestCase):
    def test_vocabulary_file_is_readable_utf8_and_a_damaged_one_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            vocab = Vocabulary.from_text("Héllo, wörld! 你好 🎭\n")
            runs.write_json(Path(tmp, runs.VOCAB), vocab.to_json())
            self.assertIn("你", Path(tmp, runs.VOCAB).read_text(encoding="utf-8"))  # UTF-8, not \u escapes
            runs.write_json(Path(tmp, runs.CONFIG), {"format_version": runs.FORMAT_VERSION})
            self.assertEqual(runs.load_run_files(tmp)[1], vocab)
            write(Path(tmp, runs.VOCAB), "{not json")
            with self.assertRaises(UserError) as cm:
                runs.load_run_files(tmp)
            self.assertIn(str(Path(tmp, runs.VOCAB)), str(cm.exception))
            self.assertEqual(len(str(cm.exception).splitlines()), 1)
