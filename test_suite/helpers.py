"""Helpers shared by the test modules: files, tiny corpora and models, quiet runs."""

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import numpy as np

from charrnn import tf_setup

tf = tf_setup.import_tensorflow()

import rnn_play  # noqa: E402
from charrnn import training  # noqa: E402
from charrnn.config import ModelConfig, TrainConfig  # noqa: E402

LINES = ["the cat sat on the mat.\n", "a dog ran to the log.\n", "my hat is on the cat.\n"]
V = 11  # vocabulary of the tiny model tests


def set_mtimes(folder, when):
    """Give every file under folder the times `when` (None: now), as os.utime does."""
    for parent, _, files in os.walk(folder):
        for name in files:
            os.utime(os.path.join(parent, name), when)


def write(path, data):
    """Write str (as UTF-8) or bytes to path, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def tiny_model_config(**overrides):
    return ModelConfig(**{"vocab_size": V, "layers": 2, "units": 8, "dropout": 0.0, **overrides})


def random_ids(batch, seqlen, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, seqlen)), tf.int32)


def random_states(model, batch, seed=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.uniform(-1, 1, (batch, s)), tf.float32) for s in model.state_sizes()]


def copy_weights(source, target):
    for name, variable in target.named_variables().items():
        variable.assign(source.named_variables()[name])


def mean_loss(y, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


def make_corpus(folder, files=8, repeats=40):
    """A learnable corpus of several files (so a validation set is held out)."""
    for i in range(files):
        write(os.path.join(folder, f"part{i}.txt"), "".join(LINES[(i + j) % 3] for j in range(repeats)))
    return os.path.join(folder, "*.txt")


def tiny(tmp, **overrides):
    """A training configuration that runs in a second or two. No samples (compiling the
    generator costs more than the run): a test of them asks for sample_every."""
    corpus = os.path.join(tmp, "corpus")
    if not os.path.isdir(corpus):
        make_corpus(corpus)
    base = dict(data=[os.path.join(corpus, "*.txt")], layers=2, units=16, seqlen=8, batch_size=4,
                dropout=0.2, lr=0.01, max_steps=20, val_every=10, sample_every=1000, checkpoint_every=10,
                checkpoint_dir=os.path.join(tmp, "ck"), log_dir=os.path.join(tmp, "log"), run="r",
                precision="fp32")  # the same arithmetic on every CPU; test_precision.py tests the others
    return TrainConfig(**{**base, **overrides})


def quiet_train(cfg, resume=None, given=(), strategy=None):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return training.train(cfg, resume=resume, given=given, strategy=strategy)


def train_stderr(cfg, resume=None, given=()):
    """Train in this process; what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        training.train(cfg, resume=resume, given=given)
    return err.getvalue()


WALL_CLOCK = "progress/seconds/"  # the run's wall time: the one value two identical runs never share


def checkpoint_tensors(prefix, section="weights/", clock=False):
    """{name: array} of the checkpoint's tensors under section; the wall clock only if asked."""
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(section) and (clock or not k.startswith(WALL_CLOCK))}


def read_scalars(folder):
    """{tag: [(step, value)]} from the event files in folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def read_layout(folder):
    """The Custom Scalars layout written in folder's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return layout_pb2.Layout.FromString(tf.make_ndarray(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto).item())


def read_texts(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"}


def flip_byte(path, fraction_denominator):
    """Invert the byte at len/fraction_denominator of the file."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // fraction_denominator] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def play(*argv):
    """Run rnn_play in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rnn_play.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def files_of(folder):
    """{relative path: (size, mtime)} of every file under folder: a snapshot to compare."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@contextlib.contextmanager
def tmpfs(folder, size="400k"):
    """A small RAM file system mounted on folder (root only; see CAN_MOUNT)."""
    os.makedirs(folder, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", folder], capture_output=True)


def _can_mount():
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as folder:
        try:
            with tmpfs(folder, "64k"):
                return True
        except (OSError, subprocess.CalledProcessError):
            return False


CAN_MOUNT = _can_mount()  # the tests on a real full or read-only disk run where this machine allows


_TRAINED = {}


def trained_run():
    """A run of 20 steps (ckpt-10, ckpt-20 in an index kept full by --keep 2, best/), trained
    once per process for the tests that work on copies of it (RunCopyTest)."""
    if not _TRAINED:
        _TRAINED["holder"] = holder = tempfile.TemporaryDirectory()  # removed when the process ends
        quiet_train(tiny(holder.name, max_steps=20, keep=2))
        _TRAINED["corpus"] = os.path.join(holder.name, "corpus")
        _TRAINED["run"] = os.path.join(holder.name, "ck", "r")
    return _TRAINED["run"]


class RunCopyTest(unittest.TestCase):
    """Tests on copies of trained_run() under a temporary --checkpoint-dir."""

    def setUp(self):
        holder = tempfile.TemporaryDirectory()
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name
        self.ck = os.path.join(self.tmp, "ck")
        trained_run()
        shutil.copytree(_TRAINED["corpus"], os.path.join(self.tmp, "corpus"))

    def copy(self, name="r"):
        folder = os.path.join(self.ck, name)
        shutil.copytree(trained_run(), folder)
        return folder

    def cfg(self, **overrides):
        return tiny(self.tmp, **{"keep": 2, **overrides})


def forward_and_gradients(model, ids, y, states):
    """(loss, {name: tensor}): a loss through the logits and the final state, and the logits,
    the final states and the gradients of every variable and initial state, in float32."""
    variables = model.named_variables()
    with tf.GradientTape() as tape:
        tape.watch(states)
        logits, new_states = model(ids, states, training=True)
        loss = mean_loss(y, logits) + tf.reduce_mean(new_states[0])  # a gradient through the final state too
    grads = tape.gradient(loss, list(variables.values()) + states)
    names = list(variables) + [f"state_{i}" for i in range(len(states))]
    return loss, {"logits": logits, **{f"final_{i}": s for i, s in enumerate(new_states)},
                  **{name: tf.convert_to_tensor(g) for name, g in zip(names, grads)}}
