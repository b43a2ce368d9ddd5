"""A newcomer's first runs: the commands the tools print run as printed (cli.py), --max-time's
bounds, runs that trained no step, mistyped flags, and what a run's name and --list say."""

import contextlib
import io
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

import rnn_play
import rnn_train
from charrnn import catalog, checkpoints, cli, run_files, runs, training
from charrnn.config import DEFAULT_DATA, TrainConfig
from charrnn.errors import UserError
from test_suite.helpers import RunCopyTest, files_of, play, quiet_train, tiny, write

ROOT = Path(__file__).resolve().parent.parent


def elsewhere_env(tmp):
    """The environment of a shell that has not activated this interpreter's environment: its
    python3, python and tensorboard are other programs (here, ones that fail)."""
    folder = os.path.join(tmp, "other-bin")
    for name in ("python3", "python", "tensorboard"):
        write(os.path.join(folder, name), "#!/bin/sh\necho 'another environment' >&2\nexit 1\n")
        os.chmod(os.path.join(folder, name), 0o755)
    env = {**os.environ, "PATH": folder + os.pathsep + os.environ.get("PATH", "")}
    env.pop(cli.MAKE_VARIABLE, None)
    return env


def tiny_flags(tmp, *more):
    return ["--data", *tiny(tmp).data, "--layers", "1", "--units", "16", "--seqlen", "8", "--batch-size", "4",
            "--val-every", "10", "--sample-every", "1000", "--checkpoint-dir", os.path.join(tmp, "ck"),
            "--log-dir", os.path.join(tmp, "log"), *more]


def printed(label, text):
    """The command printed after label, such as 'generate text', on a line of its own."""
    match = re.search(rf"^ *{label} +(\S.*)$", text, re.M)
    if match is None:
        raise AssertionError(f"no {label!r} line in:\n{text}")
    return match.group(1)


def shell(command_line, env, timeout=300):
    """Run a printed command as a user pastes it into a shell, from the folder it was printed in."""
    return subprocess.run(command_line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


class PrintedCommandsTest(unittest.TestCase):
    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name
        self.env = elsewhere_env(self.tmp)

    def test_the_resume_hint_and_the_summary_s_commands_run_as_printed(self):
        args = [sys.executable, "rnn_train.py", *tiny_flags(self.tmp, "--max-steps", "300", "--checkpoint-every",
                                                             "5", "--run", "k")]
        index = os.path.join(self.tmp, "ck", "k", "checkpoint")
        with subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as proc:
            deadline = time.time() + 120
            while not os.path.exists(index) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=120)[1]
        self.assertEqual(proc.returncode, 143, err)
        resumed = shell(printed("continue with", err), self.env)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn("done: step 300 of 300", resumed.stderr)
        self.assertTrue(os.listdir(os.path.join(self.tmp, "log", "k", "train")))  # the same log folder
        played = shell(printed("generate text", resumed.stderr), self.env)
        self.assertEqual((played.returncode, len(played.stdout)), (0, 1000), played.stderr)
        played_from = catalog.best_or_newest(os.path.join(self.tmp, "ck", "k"))  # the run's best, as rnn_play plays
        self.assertIn(os.path.join(*Path(played_from).parts[-3:]), played.stderr)
        curves = shell(printed("see the curves", resumed.stderr) + " --version_tb", self.env)
        self.assertEqual(curves.returncode, 0, curves.stderr)
        self.assertRegex(curves.stdout, r"^\d+\.\d+")

    def test_the_no_checkpoint_error_suggests_a_quick_first_run_that_runs(self):
        ck = os.path.join(self.tmp, "ck")
        r = subprocess.run([sys.executable, "rnn_play.py", "--checkpoint-dir", ck], cwd=ROOT, env=self.env,
                           capture_output=True, text=True, timeout=300)
        self.assertEqual((r.returncode, r.stderr.count("\n")), (2, 1), r.stderr)
        suggested = re.search(r"`([^`]+)`", r.stderr).group(1)
        self.assertIn("--preset quick", suggested)
        smaller = shlex.join(["--data", *tiny(self.tmp).data, "--units", "16", "--seqlen", "8", "--batch-size", "4",
                              "--max-steps", "3", "--val-every", "3", "--log-dir", os.path.join(self.tmp, "log")])
        first = shell(f"{suggested} {smaller}", self.env)  # flags given with the preset win
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("done: step 3 of 3", first.stderr)
        self.assertEqual(len(os.listdir(ck)), 1)
        code, _, err = play("--list", "--checkpoint-dir", os.path.join(self.tmp, "none"))
        self.assertEqual(code, 2)
        self.assertIn(f"`{cli.first_run(os.path.join(self.tmp, 'none'))}`", err)

    @unittest.skipUnless(shutil.which("make") and (ROOT / ".venv" / "bin" / "python").exists(),
                         "needs make and the project's .venv (make setup)")
    def test_under_make_the_next_steps_are_make_targets_that_run(self):
        env = {**self.env, cli.MAKE_VARIABLE: "1"}  # what the Makefile's targets set
        r = subprocess.run([sys.executable, "rnn_train.py", *tiny_flags(self.tmp, "--max-steps", "10", "--run", "m")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        command = printed("generate text", r.stderr)
        self.assertEqual(command, f'make play ARGS="m --checkpoint-dir {os.path.join(self.tmp, "ck")}"')
        make, *rest = shlex.split(command)
        # -o: the .venv is there already; make must not set it up again
        played = subprocess.run([make, "-o", ".venv/.installed", *rest], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=300)
        self.assertEqual(played.returncode, 0, played.stderr)
        played_from = catalog.best_or_newest(os.path.join(self.tmp, "ck", "m"))  # the run's best, as rnn_play plays
        self.assertIn(os.path.join(*Path(played_from).parts[-3:]), played.stderr)
        with mock.patch.dict(os.environ, {cli.MAKE_VARIABLE: "1"}):
            self.assertEqual(cli.first_run(), "make quick")
            self.assertEqual(cli.tensorboard_command("log"), "make tensorboard")


class MaxTimeTest(RunCopyTest):
    def refused(self, argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = rnn_train.main(argv)
        return code, err.getvalue()

    def test_a_duration_needs_a_unit_and_sane_bounds_before_any_folder_is_made(self):
        ck = os.path.join(self.tmp, "new-ck")
        for value, message in (("3", r"--max-time '3' has no unit .*90s, 10m or 1h30m"),
                               ("1h30", r"--max-time '1h30' has no unit"),
                               ("5s", r"--max-time '5s' is shorter than 30s"),
                               ("9" * 30 + "s", r"--max-time '9{20}\.\.\.' is longer than 30 days"),
                               ("9" * 401 + "m", r"--max-time '9{20}\.\.\.' is longer than 30 days")):
            with self.subTest(value=value[:10]):
                code, err = self.refused(["--max-time", value, "--checkpoint-dir", ck])
                self.assertEqual(code, 2)
                self.assertRegex(err, rf"^error: {message}")
                self.assertEqual(err.count("\n"), 1)
                self.assertLess(len(err), 300)
                self.assertFalse(os.path.exists(ck))

    def test_a_saved_max_time_is_checked_on_resume_and_a_given_one_replaces_it(self):
        run_dir = self.copy()
        path = os.path.join(run_dir, run_files.CONFIG)
        saved = run_files.read_json(path)
        for value, message in (("3", "has no unit"), ("9" * 401 + "s", "is longer than 30 days")):
            with self.subTest(value=value[:10]):
                run_files.write_json(path, {**saved, "training": {**saved["training"], "max_time": value}})
                before = files_of(run_dir)
                with self.assertRaisesRegex(UserError, rf"^\S+/r/config\.json: .*--max-time '\d+(\.\.\.)?' {message}"):
                    quiet_train(self.cfg(max_steps=30), resume="r", given={"max_steps"})
                self.assertEqual(files_of(run_dir), before)
        quiet_train(self.cfg(max_steps=22, max_time="10m"), resume="r", given={"max_steps", "max_time"})
        self.assertTrue(checkpoints.latest(run_dir).endswith("ckpt-22"))


class UntrainedRunTest(RunCopyTest):
    def test_a_run_that_trained_no_step_is_never_the_newest(self):
        self.copy("trained")  # step 20, its files from a few seconds ago
        later = itertools.count(0, 100).__next__  # each reading of the clock 100 s on: spent before a step
        with mock.patch("charrnn.budget.now", later), self.assertRaisesRegex(UserError, "spent before the first"):
            quiet_train(self.cfg(run="late", max_steps=0, max_time="30s"))
        self.assertFalse(os.path.exists(os.path.join(self.ck, "late")))  # refused: no folder left
        # A step-0 checkpoint, as earlier versions left after such a run: a loop that gets no batch.
        with mock.patch.object(training, "rnn_minibatch_sequencer", lambda *args: iter(())):
            quiet_train(self.cfg(run="late", max_steps=0, max_time="30s"))
        self.assertTrue(checkpoints.latest(os.path.join(self.ck, "late")).endswith("ckpt-0"))
        self.assertEqual(catalog.newest_run(self.ck).name, "trained")
        self.assertEqual(catalog.resolve(None, self.ck)[0].name, "trained")
        code, out, err = play("--checkpoint-dir", self.ck, "-n", "5")
        self.assertEqual((code, len(out)), (0, 5), err)
        self.assertRegex(err, r"\btrained/(best/)?ckpt-20\b")  # its best, or its newest
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(runs.open_run(self.cfg(), resume="").name, "trained")
        lines = catalog.list_runs(self.ck)
        self.assertEqual([line.split()[0] for line in lines], ["trained", "late"])
        self.assertRegex(lines[1], r"step 0, untrained$")
        shutil.rmtree(os.path.join(self.ck, "trained"))
        with self.assertRaisesRegex(UserError, r"^no trained checkpoint found under .*--preset quick"):
            catalog.resolve(None, self.ck)


class MistypedFlagTest(unittest.TestCase):
    def test_a_mistyped_flag_is_one_line_naming_the_closest(self):
        for script, argv, typo, closest in (
                (rnn_train, ["--max-tme", "3m"], "--max-tme", "--max-time"),
                (rnn_train, ["--layers", "2", "--bach-size=4"], "--bach-size", "--batch-size"),
                (rnn_play, ["--lenght", "5"], "--lenght", "--length")):
            with self.subTest(argv=argv):
                err = io.StringIO()
                with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as cm:
                    script.main(argv)
                self.assertEqual(cm.exception.code, 2)
                self.assertRegex(err.getvalue(), rf"^error: unknown flag {typo} \(did you mean {closest}\b")
                self.assertEqual(err.getvalue().count("\n"), 1)  # no usage
                self.assertIn(cli.command(f"{script.__name__}.py", "--help"), err.getvalue())


class RunNameTest(RunCopyTest):
    def test_a_new_run_is_named_after_its_first_data_file(self):
        text = os.path.join(self.tmp, "texts", "tiny shakespeare.txt")
        write(text, "the cat sat on the mat.\n" * 200)
        quiet_train(self.cfg(run="", data=[os.path.join(self.tmp, "texts", "*.txt")], validation="tail", max_steps=2))
        names = os.listdir(self.ck)
        self.assertEqual(len(names), 1)
        self.assertRegex(names[0], r"^tiny-shakespeare-gru2x16-\d{8}-\d{6}$")
        default = runs.open_run(TrainConfig(checkpoint_dir=self.ck, log_dir=os.path.join(self.tmp, "log")))
        self.assertRegex(default.name, r"^shakespeare-gru3x512-\d{8}-\d{6}$")  # nothing fetched to name it
        self.assertEqual(runs.data_name([DEFAULT_DATA]), "shakespeare")

    def test_list_shows_each_run_s_data_and_old_folders_still_list(self):
        self.copy("r")
        old = self.copy("gru2x16-20260101-120000")
        saved = run_files.read_json(os.path.join(old, run_files.CONFIG))
        run_files.write_json(os.path.join(old, run_files.CONFIG), {k: v for k, v in saved.items() if k != "training"})
        lines = {line.split()[0]: line for line in catalog.list_runs(self.ck)}
        self.assertRegex(lines["r"], r"gru 2x16 +data \S+/corpus/\*\.txt +step 20 +best validation")
        self.assertRegex(lines["gru2x16-20260101-120000"], r"gru 2x16 +data \? +step 20 +best validation")



class ReadmeTest(unittest.TestCase):
    @unittest.skipUnless(shutil.which("make"), "needs make")
    def test_the_first_screen_s_commands_name_targets_and_files_that_exist(self):
        """The README up to its second section: every make target is one (make's dry run) and
        every script an interpreter is given is a file of the project."""
        first_screen = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## What it does")[0]
        starts = r"(?:make|python3|\.venv/bin/python) "
        blocks = [c.strip() for c in re.findall(rf"^({starts}[^#\n]*)", first_screen, re.M)]
        for command in blocks:  # to be pasted as they are: no text a fresh clone lacks
            self.assertNotIn("--data", command)
        commands = blocks + re.findall(rf"`({starts}[^`]+)`", first_screen.replace("\n", " "))  # and inline
        self.assertGreater(len(commands), 10, commands)
        for command in commands:
            with self.subTest(command=command):
                words = shlex.split(command)
                if words[0] == "make":
                    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", *words[1:]], cwd=ROOT,
                                         capture_output=True, text=True, timeout=60)
                    self.assertEqual(dry.returncode, 0, dry.stderr)
                elif words[1] != "-m":
                    self.assertTrue((ROOT / words[1]).is_file(), words[1])


if __name__ == "__main__":
    unittest.main()
