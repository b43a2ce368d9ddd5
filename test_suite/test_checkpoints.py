"""Checkpoint files (checkpoints.py): what they hold, damage named in one line, and saves
that survive kills, power loss, full disks and hostile folders."""

import contextlib
import errno
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

from charrnn import catalog, checkpoints as ckpts, run_files
from charrnn.errors import UserError
from charrnn.model import CharRNN
from txt_utils import Vocabulary
from test_suite.helpers import (CAN_MOUNT, RunCopyTest, files_of, flip_byte, play, quiet_train, random_ids,
                                set_mtimes, tf, tiny, tiny_model_config, tmpfs, train_stderr, trained_run, write)


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
        shutil.rmtree(os.path.join(cls.pristine, "best"))  # so that generation, too, reads the newest checkpoint

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
            catalog.load_for_generation("r", os.path.join(self.tmp, "ck"))
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
        self.assertEqual(catalog.newest_run(root), root / "r")
        self.assertEqual(catalog.resolve(None, root)[0], root / "r")
        set_mtimes(old, None)  # now the damaged run is the newest: its index is named
        for find in (lambda: catalog.newest_run(root), lambda: catalog.resolve(None, root)):
            with self.assertRaisesRegex(UserError, r"old/checkpoint is damaged"):
                find()


class RunFilesTest(unittest.TestCase):
    def test_vocabulary_file_is_readable_utf8_and_a_damaged_one_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            vocab = Vocabulary.from_text("Héllo, wörld! 你好 🎭\n")
            run_files.write_json(Path(tmp, run_files.VOCAB), vocab.to_json())
            self.assertIn("你", Path(tmp, run_files.VOCAB).read_text(encoding="utf-8"))  # UTF-8, not \u escapes
            run_files.write_json(Path(tmp, run_files.CONFIG), {"format_version": run_files.FORMAT_VERSION})
            self.assertEqual(run_files.load_run_files(tmp)[1], vocab)
            write(Path(tmp, run_files.VOCAB), "{not json")
            with self.assertRaises(UserError) as cm:
                run_files.load_run_files(tmp)
            self.assertIn(str(Path(tmp, run_files.VOCAB)), str(cm.exception))
            self.assertEqual(len(str(cm.exception).splitlines()), 1)


class HostileFolderTest(RunCopyTest):
    """No path written in a run folder makes a tool read, write or delete outside it."""

    def test_an_index_listing_other_folders_deletes_nothing_there(self):
        victim, hostile = self.copy("V"), self.copy("H")
        before = files_of(victim)
        def index(*names):  # as tf.train.CheckpointManager writes it: each name with a time
            return (f'model_checkpoint_path: "{names[-1]}"\n' + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names)
                    + "".join(f"all_model_checkpoint_timestamps: {1e9 + i}\n" for i in range(len(names)))
                    + "last_preserved_timestamp: 1e9\n")

        write(os.path.join(hostile, "checkpoint"), index("../V/ckpt-10", f"{victim}/ckpt-20", "ckpt-10", "ckpt-20"))
        write(os.path.join(hostile, "best", "checkpoint"), index("../../V/ckpt-10", "../../V/best/ckpt-20", "ckpt-20"))
        err = train_stderr(self.cfg(max_steps=30, val_every=5), resume="H", given={"max_steps", "val_every"})
        self.assertEqual(files_of(victim), before)
        self.assertRegex(err, r"warning: .*H/checkpoint lists '\.\./V/ckpt-10', '.*/V/ckpt-20', which are "
                              r"not checkpoints of .*H: ignored")
        self.assertEqual(Path(catalog.load_for_generation("H", self.ck)[3]).parent, Path(hostile, "best"))
        self.assertEqual(ckpts.read_index(hostile), [20, 30])
        self.assertNotIn("V", Path(hostile, "checkpoint").read_text() + Path(hostile, "best", "checkpoint").read_text())

    def test_a_newest_checkpoint_outside_the_folder_is_refused_by_both_tools(self):
        victim, hostile = self.copy("V"), self.copy("H")
        shutil.rmtree(os.path.join(hostile, "best"))  # so that generation reads the newest checkpoint
        before = files_of(victim)
        for name in ("../V/ckpt-20", os.path.join(victim, "ckpt-20")):
            with self.subTest(name=name):
                write(os.path.join(hostile, "checkpoint"), f'model_checkpoint_path: "{name}"\n')
                with self.assertRaisesRegex(UserError, r"H/checkpoint names .* as the newest checkpoint, but only "
                                                       r"names ckpt-<step> of .*H itself are read") as cm:
                    quiet_train(self.cfg(max_steps=30), resume="H", given={"max_steps"})
                self.assertNotIn("\n", str(cm.exception))
                code, _, err = play("H", "--checkpoint-dir", self.ck, "-n", "10")
                self.assertEqual(code, 2)
                self.assertIn("H/checkpoint names", err)
        self.assertEqual(files_of(victim), before)

    @unittest.skipUnless(hasattr(os, "mkfifo"), "needs named pipes")
    def test_links_and_pipes_planted_in_a_run_folder_are_not_followed(self):
        hostile = self.copy("H")
        secret = os.path.join(self.tmp, "secret")
        write(secret, "root:secret\n")
        for name in ("checkpoint", ".lock"):
            os.remove(os.path.join(hostile, name))
            os.symlink(secret, os.path.join(hostile, name))
        with self.assertRaises(UserError) as cm:
            ckpts.latest(hostile)
        self.assertRegex(str(cm.exception), r"H/checkpoint is damaged \(Too many levels of symbolic links\)")
        os.remove(os.path.join(hostile, "checkpoint"))
        write(os.path.join(hostile, "checkpoint"), 'model_checkpoint_path: "ckpt-20"\n')
        with self.assertRaisesRegex(UserError, r"cannot open \S+/H/\.lock \(Too many levels of symbolic links\)"):
            quiet_train(self.cfg(max_steps=30), resume="H", given={"max_steps"})
        self.assertEqual(Path(secret).read_text(), "root:secret\n")
        os.remove(os.path.join(hostile, "vocab.json"))
        os.mkfifo(os.path.join(hostile, "vocab.json"))  # reading it would wait for a writer forever
        with self.assertRaisesRegex(UserError, r"cannot read \S+/H/vocab\.json \(not a regular file\)"):
            catalog.load_for_generation(hostile)

    def test_the_suggested_checkpoint_of_a_damaged_index_is_the_newest_by_step(self):
        for step in (500, 2000, 90):
            write(os.path.join(self.tmp, f"ckpt-{step}.index"), b"")
        write(os.path.join(self.tmp, "checkpoint"), "model_checkpoint_path: \x00{{")
        with self.assertRaisesRegex(UserError, r"checkpoint is damaged .* such as \S*/ckpt-2000$"):
            ckpts.latest(self.tmp)
        os.remove(os.path.join(self.tmp, "checkpoint"))
        with self.assertRaisesRegex(UserError, r"checkpoint is missing .* such as \S*/ckpt-2000$"):
            ckpts.latest(self.tmp)


class SaveTest(RunCopyTest):
    """Writing checkpoints: kills, power loss, a full disk."""

    def test_a_checkpoint_is_on_disk_before_the_index_names_it(self):
        folder = Path(self.tmp, "ck")
        manager = ckpts.Manager(tf.train.Checkpoint(v=tf.Variable(np.arange(1000.0))), folder, keep=1)
        manager.save(1)
        events, fsync, replace = [], os.fsync, os.replace

        def recording_fsync(fd):
            events.append(("fsync", os.fstat(fd).st_ino))
            fsync(fd)

        def recording_replace(src, dst):
            events.append(("rename", Path(dst).name))
            replace(src, dst)

        with mock.patch("os.fsync", recording_fsync), mock.patch("os.replace", recording_replace):
            manager.save(2)
        names = {p.stat().st_ino: p.name for p in folder.iterdir()}
        names[folder.stat().st_ino] = "folder"
        events = [(kind, names.get(what, what)) for kind, what in events]
        data = [e for e in events if e[1].startswith("ckpt-2.")]
        self.assertEqual(sorted(name for _, name in data), ["ckpt-2.data-00000-of-00001", "ckpt-2.index"])
        index = events.index(("fsync", "checkpoint"))  # the temporary index, renamed later
        self.assertLess(max(events.index(e) for e in data), events.index(("fsync", "folder")))
        self.assertLess(events.index(("fsync", "folder")), index)
        self.assertEqual(events[index + 1:], [("rename", "checkpoint"), ("fsync", "folder")])
        self.assertEqual(sorted(p.name for p in folder.iterdir()),
                         ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"])

    def test_what_killed_saves_leave_is_removed_when_the_run_starts_again(self):
        run_dir = self.copy()
        listed = files_of(run_dir)
        for name in ("ckpt-30_temp/part-00000-of-00001.data-00000-of-00001.tempstate123",  # killed while writing
                     "ckpt-30_temp/part-00000-of-00001.index", "ckpt-30.index.tempstate456",  # killed while merging
                     "best/ckpt-30_temp/part-00000-of-00001.data-00000-of-00001", "checkpoint.tmp",
                     "ckpt-40.index", "ckpt-40.data-00000-of-00001",  # killed before the index named it
                     "ckpt-5.index", "ckpt-5.data-00000-of-00001"):  # killed before rotating it away
            write(os.path.join(run_dir, name), b"x" * 1000)
        err = train_stderr(self.cfg(max_steps=20), resume="r", given={"max_steps"})
        self.assertEqual(set(files_of(run_dir)), set(listed))
        self.assertRegex(err, r"removed 8\.0 KB of files that \S+/r/checkpoint does not name, left by an interrupted "
                              r"save\nremoved 1\.0 KB of files that \S+/r/best/checkpoint does not name")

    def test_a_full_disk_ends_the_save_in_one_line_and_keeps_the_last_checkpoint(self):
        run_dir = self.copy()
        write_checkpoint = tf.train.Checkpoint.write

        def full_at_step_30(checkpoint, prefix, *args, **kwargs):
            if prefix.endswith("ckpt-30"):
                write(prefix + "_temp/part-00000-of-00001.data-00000-of-00001.tempstate1", b"x" * 100)
                raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
            return write_checkpoint(checkpoint, prefix, *args, **kwargs)

        before = files_of(run_dir)
        with mock.patch.object(tf.train.Checkpoint, "write", full_at_step_30), \
                self.assertRaisesRegex(UserError, r"^no space left in \S+/r to write ckpt-30 \(a checkpoint needs about "
                                                  r"\d+\.\d KB\); the last good checkpoint, \S+/r/ckpt-20, is intact: "
                                                  r"free some space, then resume the run$"):
            quiet_train(self.cfg(max_steps=30, val_every=100), resume="r", given={"max_steps", "val_every"})
        checkpoint_files = lambda files: {k: v for k, v in files.items() if "ckpt" in k or "checkpoint" in k}
        self.assertEqual(checkpoint_files(files_of(run_dir)), checkpoint_files(before))  # untouched, nothing left

    def test_free_space_for_the_checkpoints_is_checked_before_the_first_step(self):
        usage = shutil.disk_usage(self.tmp)
        with mock.patch("shutil.disk_usage", return_value=usage._replace(free=100_000)), \
                self.assertRaisesRegex(UserError, r"\S+/r has 100\.0 KB free but the run needs about \d+\.\d KB more: "
                                                  r"7 checkpoints of \d+\.\d KB \(--keep 5, the best one and the one "
                                                  r"being written\); free some space, lower --keep"):
            quiet_train(self.cfg(keep=5))
        self.assertFalse(os.path.exists(os.path.join(self.ck, "r")))

    def test_a_full_disk_while_writing_the_run_files_leaves_no_half_made_run(self):
        replace = os.replace

        def full(src, dst):
            if str(dst).endswith(".json"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            replace(src, dst)

        with mock.patch("os.replace", full), \
                self.assertRaisesRegex(UserError, r"^cannot write \S+/r/config\.json \(No space left on device\); "):
            quiet_train(self.cfg())
        self.assertEqual(os.listdir(self.tmp), ["corpus"])

    @unittest.skipUnless(CAN_MOUNT, "needs root and mount -t tmpfs")
    def test_on_a_real_full_disk(self):
        disk = os.path.join(self.tmp, "disk")
        with tmpfs(disk, "400k"):
            with self.assertRaisesRegex(UserError, r"has 4\d\d\.\d KB free but the run needs about .* 12 checkpoints"):
                quiet_train(self.cfg(checkpoint_dir=disk, keep=10))
            self.assertEqual(os.listdir(disk), [])
            shutil.copytree(trained_run(), os.path.join(disk, "r"))
            save = ckpts.Manager.save

            def fill_then_save(manager, step):
                with open(os.path.join(disk, "filler"), "wb") as f, contextlib.suppress(OSError):
                    f.write(b"x" * 400_000)  # another program takes the space that is left
                return save(manager, step)

            with mock.patch.object(ckpts.Manager, "save", fill_then_save), self.assertRaisesRegex(UserError, r"^no space left in \S+/r to write ckpt-30 .* the last good "
                                                      r"checkpoint, \S+/ckpt-20, is intact"):
                quiet_train(self.cfg(checkpoint_dir=disk, max_steps=30, val_every=100), resume="r",
                            given={"max_steps", "val_every"})
            run_dir = os.path.join(disk, "r")
            self.assertFalse([name for name in os.listdir(run_dir) if "temp" in name or name.startswith("ckpt-30")])
            os.remove(os.path.join(disk, "filler"))
            ckpts.verify_files(os.path.join(run_dir, "ckpt-20"))


class RestoreTest(RunCopyTest):
    """Every saved weight is used, every weight is restored, and the vocabulary is the one trained with."""

    def test_generation_refuses_a_model_with_fewer_layers_than_its_checkpoint(self):
        config = run_files.read_json(os.path.join(self.copy(), "config.json"))
        config["model"]["layers"] = config["training"]["layers"] = 1
        run_files.write_json(os.path.join(self.ck, "r", "config.json"), config)
        code, out, err = play("r", "--checkpoint-dir", self.ck, "-n", "10")
        self.assertEqual((code, out), (2, ""))
        self.assertRegex(err, r"^error: \S+/ckpt-20 holds weights/rnn_1/bias, weights/rnn_1/kernel, "
                              r"weights/rnn_1/recurrent_kernel, which this model \(\S+/config\.json\) does not have")
        self.assertEqual(err.count("\n"), 1)

    def test_a_permuted_vocabulary_is_refused_by_both_tools(self):
        vocab = run_files.read_json(os.path.join(self.copy(), "vocab.json"))
        vocab["chars"][0], vocab["chars"][1] = vocab["chars"][1], vocab["chars"][0]
        run_files.write_json(os.path.join(self.ck, "r", "vocab.json"), vocab)
        message = r"\S+/r/vocab\.json is not the vocabulary \S+/ckpt-20 was trained with"
        with self.assertRaisesRegex(UserError, message):
            catalog.load_for_generation("r", self.ck)
        with self.assertRaisesRegex(UserError, message):
            quiet_train(self.cfg(max_steps=30, allow_corpus_change=True), resume="r",
                        given={"max_steps", "allow_corpus_change"})

    def test_a_checkpoint_written_before_vocabulary_fingerprints_still_loads(self):
        def earlier_version(model, optimizer, progress, states, vocabulary):
            return tf.train.Checkpoint(
                weights=tf.train.Checkpoint(**model.named_variables()), rng=tf.train.Checkpoint(**model.rng_variables()),
                optimizer=optimizer, progress=tf.train.Checkpoint(**progress),
                state=tf.train.Checkpoint(**{f"layer_{i}": s for i, s in enumerate(states)}))

        with mock.patch.object(ckpts, "training_checkpoint", earlier_version):
            quiet_train(self.cfg(max_steps=2))
        prefix = os.path.join(self.ck, "r", "ckpt-2")
        self.assertNotIn(ckpts.VOCABULARY, tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
        catalog.load_for_generation("r", self.ck)
        quiet_train(self.cfg(max_steps=2), resume="r", given={"max_steps"})  # restores it, nothing to train
