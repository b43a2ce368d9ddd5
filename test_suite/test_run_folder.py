"""A run folder (run.py) as untrusted input: its saved configuration, its index files,
its lock, the data it names; every refusal is one line."""

import os
import shutil
import subprocess
import time
import unittest
from unittest import mock

from charrnn import config
import rnn_train
from charrnn import catalog, lock, run_files, runs, trainer
from charrnn.errors import UserError
from test_suite.helpers import CAN_MOUNT, RunCopyTest, play, quiet_train, tmpfs, train_stderr, write


class SavedConfigTest(RunCopyTest):
    def edit_config(self, edit):
        path = os.path.join(self.ck, "r", run_files.CONFIG)
        saved = run_files.read_json(path)
        edit(saved)
        run_files.write_json(path, saved)

    def test_saved_values_are_checked_like_flags(self):
        self.copy()
        pristine = run_files.read_json(os.path.join(self.ck, "r", run_files.CONFIG))
        for section, name, value, message in (
                ("training", "val_every", 0, "--val-every must be >= 1"),
                ("training", "keep", 0, "--keep must be >= 1"),
                ("training", "clip_norm", float("nan"), r"--clip-norm must be a number \(got nan\)"),
                ("training", "layers", "2", "--layers must be an integer"),
                ("training", "layers", True, "--layers must be an integer"),
                ("training", "cell", "gruu", "--cell must be one of"),
                ("model", "units", 32, r"the model section \(gru 2x32\) disagrees with the training section")):
            with self.subTest(name=name, value=value):
                self.edit_config(lambda saved: saved.update({**pristine, section: {**pristine[section], name: value}}))
                with self.assertRaisesRegex(UserError, rf"^\S+/r/config\.json: .*{message}") as cm:
                    quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"})
                self.assertNotIn("\n", str(cm.exception))

    def test_an_edited_or_missing_config_is_one_line_naming_it_for_both_tools(self):
        def model(edit):
            return lambda saved: edit(saved["model"])

        def units(saved):  # both sections, so they agree: only the checkpoint tells
            saved["model"]["units"] = saved["training"]["units"] = 32

        for edit, message in ((lambda saved: saved.pop("model"), r"config\.json has no model section"),
                              (model(lambda m: m.update(vocab_size=m["vocab_size"] + 1)),
                               r"vocab\.json has \d+ symbols but \S+/config\.json says vocab_size"),
                              (units, r"ckpt-\d+ does not match this (run|model .*): its \S+ has shape \(16, \d+\), "
                                      r"the model's \(32, \d+\); restore the run's config\.json and vocab\.json"),
                              (None, r"\S+/r holds checkpoints but \S+/r has no config\.json, so their model cannot be rebuilt; "
                                     r"restore \S+/r/config\.json")):
            with self.subTest(message=message):
                shutil.rmtree(os.path.join(self.ck, "r"), ignore_errors=True)
                self.copy()
                if edit is None:
                    os.remove(os.path.join(self.ck, "r", run_files.CONFIG))
                else:
                    self.edit_config(edit)
                before = sorted(os.listdir(os.path.join(self.ck, "r")))
                with self.assertRaisesRegex(UserError, message) as cm:
                    quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"})
                self.assertNotIn("\n", str(cm.exception))
                code, _, err = play("r", "--checkpoint-dir", self.ck)
                self.assertEqual((code, err.count("\n")), (2, 1), err)
                self.assertRegex(err, message)
                self.assertEqual(sorted(os.listdir(os.path.join(self.ck, "r"))), before)  # nothing written

    def test_a_config_that_is_not_a_json_object_is_listed_as_unreadable(self):
        self.copy()
        write(os.path.join(self.ck, "r", run_files.CONFIG), "[]")
        code, out, err = play("--list", "--checkpoint-dir", self.ck)
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^r +cannot be read: \S+/config\.json has no model section")

    @unittest.skipIf(config.physical_memory() is None, "this system does not tell its memory size")
    def test_a_model_too_large_for_memory_is_refused_at_once_before_it_is_built(self):
        self.copy()
        self.edit_config(lambda saved: [saved[section].update(layers=4, units=10 ** 9)
                                        for section in ("model", "training")])
        too_large = r"a gru of 4 layers of 1000000000 units has .* weights; .* more than this machine's"
        built = mock.Mock(side_effect=AssertionError("a model was built"))
        with mock.patch.object(catalog, "CharRNN", built), mock.patch.object(trainer, "CharRNN", built):
            for refuse in (lambda: quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"}),
                           lambda: catalog.load_for_generation("r", self.ck),
                           lambda: rnn_train.parse(["--layers", "4", "--units", "1000000000"])):
                start = time.perf_counter()
                with self.assertRaisesRegex(UserError, too_large):
                    refuse()
                self.assertLess(time.perf_counter() - start, 1.0)
            code, _, err = play("r", "--checkpoint-dir", self.ck)
            self.assertEqual((code, err.count("\n")), (2, 1))


class RunFolderTest(RunCopyTest):
    def test_a_damaged_best_index_is_one_line_for_both_tools(self):
        run_dir = self.copy()
        write(os.path.join(run_dir, "best", "checkpoint"), "model_checkpoint_path: \x00{{")
        with self.assertRaisesRegex(UserError, r"^\S+/r/best/checkpoint is damaged \(line 1 holds no quoted name\); "
                                               r"delete it and pass a checkpoint prefix such as \S+/best/ckpt-20$"):
            quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"})
        for name in os.listdir(run_dir):  # a young run: only its best checkpoint
            if name.startswith("ckpt-") or name == "checkpoint":
                os.remove(os.path.join(run_dir, name))
        for spec in ("r", "r/best"):
            code, _, err = play(spec, "--checkpoint-dir", self.ck)
            self.assertEqual(code, 2)
            self.assertRegex(err, r"^error: \S+/r/best/checkpoint is damaged .*\n$")

    def test_a_run_folder_that_cannot_be_written_is_one_line(self):
        run_dir = self.copy()
        os.remove(os.path.join(run_dir, run_files.LOCK))
        os.mkdir(os.path.join(run_dir, run_files.LOCK))  # cannot be opened, even by root
        with self.assertRaisesRegex(UserError, r"^cannot open \S+/r/\.lock \(Is a directory\): training into a run "
                                               r"needs a writable folder"):
            quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"})

    @unittest.skipUnless(CAN_MOUNT, "needs root and mount -t tmpfs")
    def test_a_read_only_run_folder_is_one_line(self):
        disk = os.path.join(self.tmp, "disk")
        with tmpfs(disk, "1m"):
            shutil.copytree(self.copy(), os.path.join(disk, "r"))
            subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
            with self.assertRaisesRegex(UserError, r"^cannot open \S+/disk/r/\.lock \(Read-only file system\)"):
                quiet_train(self.cfg(max_steps=30), resume=os.path.join(disk, "r"), given={"max_steps"})
            code, out, err = play(os.path.join(disk, "r"), "-n", "5")  # generation writes nothing
            self.assertEqual((code, len(out)), (0, 5), err)

    def test_a_new_run_is_not_refused_for_a_write_probe_in_its_log_folder(self):
        # The chief of a multi-worker run probes its new log folder while the other
        # worker checks that the run's name is free.
        cfg = self.cfg(run="fresh")
        write(os.path.join(cfg.log_dir, "fresh", ".write-test-abc"), "")
        self.assertEqual(runs.open_run(cfg).name, "fresh")
        write(os.path.join(cfg.log_dir, "fresh", "events.out"), "")  # a log: the name is taken
        with self.assertRaisesRegex(UserError, r"log/fresh already exists; continue it with `--resume fresh`"):
            runs.open_run(cfg)

    def test_a_taken_name_whose_lock_is_held_is_left_to_the_lock(self):
        # The chief holds the run's lock from the moment it creates the folders: what it
        # writes then is not another run's, and a real other run is refused by the lock.
        run_dir = self.copy()
        with lock.RunLock(run_dir):
            run = runs.open_run(self.cfg(run="r"))
            with self.assertRaisesRegex(UserError, r"^\S+/r is being trained by pid \d+; wait for it"):
                with run.claimed():
                    pass
        with self.assertRaisesRegex(UserError, r"/r already exists; continue it with `--resume r`"):
            runs.open_run(self.cfg(run="r"))

    def test_the_saved_data_is_shown_before_it_is_read(self):
        self.copy()
        err = train_stderr(self.cfg(max_steps=20), resume="r", given={"max_steps"})
        self.assertRegex(err, r"^reading the data saved in \S+/r/config\.json: \S+/corpus/\*\.txt\n")

    def test_new_text_in_another_alphabet_is_named_with_its_share_of_unknown_characters(self):
        self.copy()
        write(os.path.join(self.tmp, "corpus", "part9.txt"), "μῆνιν ἄειδε θεὰ Πηληϊάδεω Ἀχιλῆος\n" * 200)
        cfg = self.cfg(max_steps=20, allow_corpus_change=True)
        err = train_stderr(cfg, resume="r", given={"max_steps", "allow_corpus_change", "data"})
        self.assertRegex(err, r"warning: \d\d\.\d% of the characters of the new or changed text are not in run r's "
                              r"vocabulary and train as unknown: \S+/part9\.txt \(8\d\.\d%\)\n")
