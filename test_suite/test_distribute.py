"""Training over replicas (distribute.py, rnn_train.py --distribute): the steps of one device,
each row's state carried, exact resume of killed workers, checkpoints that play on one CPU, refusals.

Two logical CPU devices must be configured before TensorFlow starts, and a
MultiWorkerMirroredStrategy must be made then too, so those tests run in fresh
processes; every wait on them is bounded, so a hung collective fails a test
instead of hanging the suite.
"""

import contextlib
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

import keras
import numpy as np

from charrnn import checkpoints as ckpts, distribute, lock, run_files, steps
import rnn_train
from charrnn import training
from charrnn.model import CharRNN
from test_suite.helpers import (checkpoint_tensors, play, quiet_train, random_ids, random_states, tf, tiny,
                                tiny_model_config, write)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("weights/", "optimizer/", "rng/", "state/", "progress/")
# Two replicas against one device: each sums half the batch's rows and the all-reduce
# adds the halves, so float32 sums round differently (about 1e-7 relative). Over 20 Adam
# steps the weights drifted apart by at most 1.2e-7 when measured; 1e-5 leaves a margin of
# about 100, and a replica given the wrong rows of the state moves them by more than 0.1.
TOLERANCE = 1e-5
TIMEOUT = 300  # seconds for a group of processes, on a loaded machine; a hung collective fails the test

# A fresh process with two logical CPU devices trains the same tiny run on one device,
# on two replicas, and on two replicas whose state rows are wrong on purpose; then
# checks a batch that does not divide, and the dropout masks of the two replicas.
TWO_DEVICES = """
import contextlib, io, json, sys
from unittest import mock
from charrnn import tf_setup
with tf_setup.starting_tensorflow() as tf:  # before TensorFlow starts: two logical CPU devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from charrnn import distribute, model, steps, training
from charrnn.config import TrainConfig
from charrnn.errors import UserError

base = json.loads(sys.argv[1])
rows = steps.state_rows
faults = {"swapped": lambda states, first, n: rows(states, n - first, n),  # the other replica's rows
          "dropped": lambda states, first, n: [tf.zeros_like(s) for s in rows(states, first, n)]}
for run, kind in (("one", "none"), ("two", "mirrored"), ("swapped", "mirrored"), ("dropped", "mirrored")):
    with mock.patch.object(steps, "state_rows", faults.get(run, rows)), \\
            contextlib.redirect_stdout(io.StringIO()):
        training.train(TrainConfig(**base, run=run, distribute=kind), strategy=distribute.make_strategy(kind))
result = {}
strategy = distribute.make_strategy("mirrored")
try:
    training.train(TrainConfig(**{**base, "batch_size": 5}, run="odd", distribute="mirrored"), strategy=strategy)
except UserError as e:
    result["refused"] = str(e)
with strategy.scope():
    dropout = model.Dropout(0.5, seed=3)
masks = strategy.experimental_local_results(strategy.run(lambda: dropout(tf.ones([1000]), training=True)))
result["replicas"] = strategy.num_replicas_in_sync
result["masks_differ"] = bool(tf.reduce_any(masks[0] != masks[1]))
result["seed_states"] = [s.numpy().tolist() for s in dropout.seed_generator.state.value.values]
print(json.dumps(result))
"""


def tiny_flags(cfg):
    """rnn_train.py flags for the tiny configuration of helpers.tiny."""
    return ["--data", *cfg.data, "--layers", str(cfg.layers), "--units", str(cfg.units), "--seqlen", str(cfg.seqlen),
            "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--max-steps", str(cfg.max_steps),
            "--checkpoint-every", str(cfg.checkpoint_every), "--val-every", str(cfg.val_every),
            "--sample-every", str(cfg.sample_every), "--checkpoint-dir", cfg.checkpoint_dir, "--log-dir", cfg.log_dir]


def free_ports(n):
    """n ports that were free a moment ago (all held at once, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Workers:
    """rnn_train.py --distribute multi-worker in two processes on 127.0.0.1, as two machines would run it."""

    def __init__(self, tmp, name, *flags, ports=None, kill_after=None):
        """ports: two free ports (default: found now); kill_after: a file, both workers are killed
        as soon as it exists."""
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports or free_ports(2)]}
        self.logs = [Path(tmp, f"{name}-{i}.err") for i in range(2)]
        self.procs = []
        for i, log in enumerate(self.logs):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                   "TMPDIR": tmp}  # a killed worker leaves its scratch folder in the test's
            with open(log, "w") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "rnn_train.py", *flags, "--distribute", "multi-worker"], cwd=ROOT, env=env,
                    stdout=subprocess.DEVNULL, stderr=err, text=True))
        self.kill_after = kill_after
        if kill_after is not None:
            self.killer = threading.Thread(target=self._kill_after, daemon=True)
            self.killer.start()

    def _kill_after(self):
        deadline = time.time() + TIMEOUT
        while not self.kill_after.exists() and self.running() and time.time() < deadline:
            time.sleep(0.01)
        self.kill()

    def errors(self):
        return "\n".join(f"--- worker {i}:\n{log.read_text()[-3000:]}" for i, log in enumerate(self.logs))

    def running(self):
        return all(p.poll() is None for p in self.procs)

    def wait(self, test, timeout=None):
        """Wait for both to end; kill both and fail past the timeout. Returns the chief's stderr."""
        timeout = timeout or TIMEOUT
        deadline = time.time() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.kill()
            test.fail(f"the workers did not finish in {timeout} s (a hung collective?)\n{self.errors()}")
        test.assertEqual([p.returncode for p in self.procs], [0, 0], self.errors())
        return self.logs[0].read_text()

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(timeout=60)


class OneDeviceTest(unittest.TestCase):
    def test_mirrored_on_one_device_trains_bit_for_bit_like_none(self):
        # A MirroredStrategy over one device returns plain tensors, not PerReplica values;
        # with one replica nothing is reduced or re-split and the dropout masks are the same.
        self.assertIsNone(distribute.make_strategy("none"))
        with tempfile.TemporaryDirectory() as tmp:
            for run, kind in (("one", "none"), ("mirrored", "mirrored")):
                scoped, build = [], steps.make_train_step

                def built_with(*args, **kwargs):  # whether a strategy was in scope when the step was built
                    scoped.append(tf.distribute.has_strategy())
                    return build(*args, **kwargs)

                with mock.patch.object(steps, "make_train_step", built_with):
                    quiet_train(tiny(tmp, run=run, distribute=kind, sample_every=1000),
                                strategy=distribute.make_strategy(kind))
                self.assertEqual(scoped, [kind != "none"])  # the default builds no strategy
            one = ckpts.latest(os.path.join(tmp, "ck", "one"))
            mirrored = ckpts.latest(os.path.join(tmp, "ck", "mirrored"))
            self.assertTrue(one.endswith("ckpt-20") and mirrored.endswith("ckpt-20"))
            for section in SECTIONS:
                a, b = checkpoint_tensors(one, section), checkpoint_tensors(mirrored, section)
                self.assertEqual(sorted(a), sorted(b), section)  # the same variables
                for name in a:
                    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


    def test_a_non_finite_step_changes_nothing(self):
        strategy = distribute.make_strategy("mirrored")
        with strategy.scope():
            model = CharRNN(tiny_model_config(dropout=0.1), "fused")
            variables = list(model.named_variables().values())
            optimizer = keras.optimizers.Adam(1e-2)
            optimizer.build(variables)
            states = [tf.Variable(s) for s in random_states(model, 4)]
            step = steps.make_train_step(model, optimizer, variables, states, clip_norm=5.0)
        x, y = random_ids(4, 6), random_ids(4, 6, seed=5)
        self.assertTrue(bool(step(x, y)[2]))
        variables[0].assign(tf.fill(variables[0].shape, float("nan")))
        kept = [v.numpy() for v in variables + optimizer.variables + states]
        _, _, finite = step(x, y)
        self.assertFalse(bool(finite))
        for before, v in zip(kept, variables + optimizer.variables + states):
            np.testing.assert_array_equal(v.numpy(), before, err_msg=v.name)


class RefusalTest(unittest.TestCase):
    def test_tf_config_mistakes_are_one_line_errors(self):
        worker = {"type": "worker", "index": 0}
        cluster = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
        for text, pattern in (
                (None, r"--distribute multi-worker needs TF_CONFIG"),
                ('{"cluster": ', r"TF_CONFIG is not valid JSON"),
                ('["worker"]', r"TF_CONFIG must be a JSON object"),
                (json.dumps({"task": worker}), r'TF_CONFIG has no "cluster"'),
                (json.dumps({"cluster": cluster}), r'TF_CONFIG has no "task"'),
                (json.dumps({"cluster": {"worker": ["127.0.0.1"]}, "task": worker}),
                 r"TF_CONFIG cluster 'worker' must be a list of host:port strings"),
                (json.dumps({"cluster": {**cluster, "ps": ["h:1"]}, "task": worker}), r"TF_CONFIG cluster has 'ps' tasks"),
                (json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}),
                 r"TF_CONFIG task type 'chief' is not in the cluster"),
                (json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}),
                 r"TF_CONFIG task index 2 is out of range: the cluster has 2 worker tasks, indexed 0 to 1"),
                (json.dumps({"cluster": cluster, "task": {"type": "worker", "index": "1"}}),
                 r"TF_CONFIG task index '1' must be an integer, 0 to 1")):
            with self.subTest(text=text):
                env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | ({"TF_CONFIG": text} if text else {})
                err = io.StringIO()
                with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stderr(err):
                    code = rnn_train.main(["--distribute", "multi-worker", "--max-steps", "1"])
                self.assertEqual(code, 2)
                self.assertRegex(err.getvalue(), "^error: " + pattern)
                self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
        self.assertEqual(distribute.read_tf_config(json.dumps({"cluster": cluster, "task": worker})),
                         (cluster, "worker", 0))


class ScratchTest(unittest.TestCase):
    def test_the_scratch_folders_of_killed_workers_are_removed_by_the_next_run(self):
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(tempfile, "tempdir", tmp):
            def scratch(name, age):
                folder = Path(tmp, f"{distribute.SCRATCH}{name}")
                write(folder / "train" / "events.out", "x")
                write(folder / run_files.LOCK, "pid 1")
                os.utime(folder / run_files.LOCK, (time.time() - age,) * 2)
                return folder

            killed, young, live = scratch("killed", 60), scratch("young", 0), scratch("live", 60)
            other = Path(tmp, "other-worker-1")  # not this tool's
            write(other / run_files.LOCK, "")
            run = distribute.WorkerRun(Path(tmp, "ck", "r"), Path(tmp, "log", "r"), tiny(tmp))
            with lock.RunLock(live), run.claimed():
                self.assertTrue(run.scratch.is_dir())
                distribute.remove_dead_scratch()  # as prepare_run does before the next run
                self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()),
                                 sorted([young.name, live.name, other.name, run.scratch.name, "corpus"]))
            self.assertFalse(killed.exists())
            self.assertFalse(run.scratch.exists())  # a worker that ends removes its own


class StartUpTest(unittest.TestCase):
    # The start-up race was seen in 2 of 17 new runs; its two causes (the chief's write probe
    # in the new folders, and its lock held while the other worker checks the name) each have
    # a test that sets them up directly (test_run_folder). Four runs here check the whole
    # start end to end; 20 took 276 s of a 903 s suite on one core of a Xeon.
    RUNS = 4

    def test_new_two_worker_runs_start_every_time(self):
        # Both workers check that the run's name is free while the chief creates its folders.
        with tempfile.TemporaryDirectory() as tmp:
            flags = tiny_flags(tiny(tmp, layers=1, max_steps=1, val_every=1000, sample_every=1000))
            for i in range(self.RUNS):
                workers = Workers(tmp, f"new{i}", *flags, "--run", f"new{i}")
                self.addCleanup(workers.kill)
                workers.wait(self)


class FreshProcessesTest(unittest.TestCase):
    """Two replicas on two logical CPU devices, and two workers on 127.0.0.1.

    Both start in setUpClass: most of their time is TensorFlow starting, and that
    overlaps. The workers of the run to be killed are killed by a thread as soon as
    their chief has written a checkpoint.
    """

    @classmethod
    def setUpClass(cls):
        holder = tempfile.TemporaryDirectory()
        cls.addClassCleanup(holder.cleanup)
        cls.tmp = holder.name
        cfg = tiny(cls.tmp, dropout=0.0, sample_every=1000)  # the masks of two replicas differ from one device's
        base = {k: v for k, v in vars(cfg).items() if k not in ("run", "distribute")}
        cls.two_devices = subprocess.Popen([sys.executable, "-c", TWO_DEVICES, json.dumps(base)], cwd=ROOT,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cls.addClassCleanup(cls.two_devices.kill)
        cls.workers_cfg = tiny(cls.tmp, layers=1, max_steps=30, val_every=1000, sample_every=1000,
                               checkpoint_dir=os.path.join(cls.tmp, "wck"), log_dir=os.path.join(cls.tmp, "wlog"))
        flags, ports = tiny_flags(cls.workers_cfg), free_ports(4)
        cls.whole = Workers(cls.tmp, "whole", *flags, "--run", "whole", ports=ports[:2])
        cls.addClassCleanup(cls.whole.kill)
        cls.killed = Workers(cls.tmp, "killed", *flags, "--run", "killed", ports=ports[2:],
                             kill_after=Path(cls.workers_cfg.checkpoint_dir, "killed", "checkpoint"))
        cls.addClassCleanup(cls.killed.kill)

    def test_two_replicas_train_like_one_device_and_carry_each_row(self):
        try:
            out, err = self.two_devices.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"two devices: no result in {TIMEOUT} s")
        self.assertEqual(self.two_devices.returncode, 0, err[-3000:])
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(result["replicas"], 2)
        self.assertIn("--distribute mirrored: 2 replicas, 2 rows of the batch each, here on CPU:0, CPU:1", err)
        found = {run: checkpoint_tensors(ckpts.latest(os.path.join(self.tmp, "ck", run)), "")
                 for run in ("one", "two", "swapped", "dropped")}
        one, two = found["one"], found["two"]
        self.assertEqual(sorted(one), sorted(two))  # the same variables: it plays on one device
        self.assertEqual(two["state/layer_0/.ATTRIBUTES/VARIABLE_VALUE"].shape, (4, 16))  # every row, one tensor
        for name in one:
            if name.startswith(SECTIONS) and one[name].dtype.kind == "f":
                np.testing.assert_allclose(two[name], one[name], rtol=0, atol=TOLERANCE, err_msg=name)
            elif name.startswith(SECTIONS):
                np.testing.assert_array_equal(two[name], one[name], err_msg=name)
        # The tolerance tells a right state from a wrong one: a replica reading the other's
        # rows, or starting every batch cold, ends far from one device.
        for fault in ("swapped", "dropped"):
            moved = max(np.abs(found[fault][n] - one[n]).max() for n in one if n.startswith("weights/"))
            self.assertGreater(moved, 1000 * TOLERANCE, fault)
        self.assertRegex(result["refused"], r"^--batch-size 5 does not divide among the 2 replicas of "
                                            r"--distribute mirrored; use a multiple of 2, such as 4$")
        self.assertTrue(result["masks_differ"])  # each replica drops its own units...
        self.assertEqual(*result["seed_states"])  # ...and the generator's state advanced alike

    def test_killed_workers_resume_exactly_and_the_checkpoint_plays_on_one_device(self):
        cfg, killed = self.workers_cfg, self.killed
        killed.killer.join(TIMEOUT)
        index = killed.kill_after
        self.assertTrue(index.exists(), f"no checkpoint before the kill\n{killed.errors()}")
        stopped = ckpts.step_of(ckpts.latest(index.parent))
        self.assertLess(stopped, 30, "the run ended before the kill; the test proved nothing")
        self.whole.wait(self)
        resumed = Workers(self.tmp, "resumed", "--resume", "killed", "--checkpoint-dir", cfg.checkpoint_dir,
                          "--log-dir", cfg.log_dir)
        self.addCleanup(resumed.kill)
        err = resumed.wait(self)
        self.assertIn(f"resuming {index.parent} from ckpt-{stopped}", err)
        a = ckpts.latest(os.path.join(cfg.checkpoint_dir, "whole"))
        b = ckpts.latest(os.path.join(cfg.checkpoint_dir, "killed"))
        self.assertTrue(a.endswith("ckpt-30") and b.endswith("ckpt-30"), (a, b))
        for section in SECTIONS[:4]:
            x, y = checkpoint_tensors(a, section), checkpoint_tensors(b, section)
            self.assertTrue(x, section)
            for name in x:
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)
        # Only the chief writes logs: one TensorBoard file per process that trained the run.
        self.assertEqual(len(list(Path(cfg.log_dir, "whole", "train").glob("events.*"))), 1)
        # The checkpoint plays on one CPU, and one device resumes it, re-splitting the state.
        code, out, play_err = play("whole", "--checkpoint-dir", cfg.checkpoint_dir, "-n", "20")
        self.assertEqual((code, len(out)), (0, 20), play_err)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            training.train(dataclasses.replace(cfg, max_steps=32), resume="whole", given={"max_steps"})
        self.assertIn("resuming with 1 replica a checkpoint trained with 2: the carried state is re-split by rows, "
                      "4 per replica", err.getvalue())
        self.assertTrue(ckpts.latest(os.path.join(cfg.checkpoint_dir, "whole")).endswith("ckpt-32"))
