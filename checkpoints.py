"""Checkpoints: what one holds, and writing and reading them safely.

A checkpoint is a tf.train.Checkpoint bundle, `ckpt-<step>.index` and
`ckpt-<step>.data-*`, in a folder whose `checkpoint` index file names the
newest ones; run.py decides which folders. This module is the only code that
knows those file names.

    training_checkpoint / weights_checkpoint   what a checkpoint holds
    Manager                                    writes them, keeps the last N
    latest / restore / verify_files            reads them, refusing damage

tf.train.Checkpoint writes to temporary names and renames them into place, so a
kill during a save never leaves a half-written checkpoint behind. Loading reads
tensors only: no pickle, no Lambda layers, no code from the checkpoint.
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from errors import UserError

INDEX = "checkpoint"
PREFIX = "ckpt"
# A run's best validation loss before its first validation: the largest float, not inf,
# so that no checkpoint holds NaN or Inf.
NOT_VALIDATED = float(np.finfo(np.float64).max)


# ---------------------------------------------------------------- checkpoint contents

def training_checkpoint(model, optimizer, progress, states):
    """Everything an exact resume needs, as one tf.train.Checkpoint.

    weights: the model's variables under implementation-independent names, so
             a checkpoint written by the CPU kernels loads into cuDNN layers;
    rng:     the dropout seed generators' states (save_weights misses them);
    optimizer: Adam's slots and iteration count;
    progress:  step, epoch, batch position, counters (dict of tf.Variable);
    state:     the RNN state carried into the next batch.
    """
    return tf.train.Checkpoint(
        weights=tf.train.Checkpoint(**model.named_variables()),
        rng=tf.train.Checkpoint(**model.rng_variables()),
        optimizer=optimizer,
        progress=tf.train.Checkpoint(**progress),
        state=tf.train.Checkpoint(**{f"layer_{i}": s for i, s in enumerate(states)}),
    )


def weights_checkpoint(model):
    """The weights alone: what generation needs from a training checkpoint."""
    return tf.train.Checkpoint(weights=tf.train.Checkpoint(**model.named_variables()))


def verify_files(prefix):
    """Read every tensor of a checkpoint; raise UserError naming a damaged file."""
    index = prefix + ".index"
    if not os.path.isfile(index):
        raise UserError(f"{index} is missing; delete the `checkpoint` file's entry for it "
                        f"or pass another checkpoint")
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = list(reader.get_variable_to_shape_map())
    except Exception as e:
        raise UserError(f"{index} is damaged or unreadable ({first_line(e)}); "
                        f"use an earlier checkpoint of the run") from None
    data = sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
    if not data:
        raise UserError(f"{prefix}.data-00000-of-00001 is missing; use an earlier checkpoint of the run")
    try:
        for name in names:
            reader.get_tensor(name)
    except Exception as e:
        raise UserError(f"{data[0]} is damaged ({first_line(e)}); use an earlier checkpoint of the run") from None


def restore(checkpoint, prefix, what="checkpoint", extra_ok=False):
    """Restore every object of `checkpoint` from `prefix`; a partial restore is an error.

    extra_ok: the file may hold more than `checkpoint` asks for (generation reads
    only the weights of a training checkpoint).
    """
    verify_files(prefix)
    try:
        status = checkpoint.restore(prefix)
        status.assert_existing_objects_matched()
        if extra_ok:
            status.expect_partial()
        else:
            status.assert_consumed()
    except AssertionError as e:
        raise UserError(f"{prefix} does not match this {what}: {first_line(e)[:300]}") from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{prefix} cannot be restored ({first_line(e)[:300]})") from None


# ---------------------------------------------------------------- writing

class Manager:
    """Writes the checkpoints of one folder as ckpt-<step> and keeps the newest `keep`.

    tf.train.CheckpointManager does the work; this wrapper is where its unsafe
    behaviours are handled, once, for every caller.
    """

    def __init__(self, checkpoint, folder, keep):
        self.folder = Path(folder)
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.folder), max_to_keep=keep,
                                                  checkpoint_name=PREFIX)

    @property
    def latest(self):
        """The prefix of the newest checkpoint this manager knows, or None."""
        return self.manager.latest_checkpoint

    def save(self, step):
        """Write the checkpoint of `step`; returns its prefix."""
        return self.manager.save(checkpoint_number=step)


# ---------------------------------------------------------------- reading

def last_written(folder):
    """When the newest checkpoint in folder was written (a file time), or None."""
    return max((f.stat().st_mtime for f in Path(folder).glob(f"{PREFIX}-*.index")), default=None)


def step_of(prefix):
    """The step in a checkpoint's name: .../ckpt-1500 -> 1500."""
    return int(Path(prefix).name.rsplit("-", 1)[-1])


def progress_of(prefix):
    """(step, best validation loss) saved in a training checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    return (int(reader.get_tensor("progress/step/.ATTRIBUTES/VARIABLE_VALUE")),
            float(reader.get_tensor("progress/best_val_loss/.ATTRIBUTES/VARIABLE_VALUE")))


def latest(folder):
    """Prefix of the newest checkpoint in folder, or None when it has none.

    A `checkpoint` index file that cannot be parsed, or one that names missing
    files, is an error rather than "no checkpoint": a silent fresh start would
    write over the run's checkpoints.
    """
    folder = Path(folder)
    index = folder / INDEX
    bundles = sorted(folder.glob(f"{PREFIX}-*.index"))
    if not index.exists():
        if bundles:
            raise UserError(f"{index} is missing but {folder} holds checkpoints; "
                            f"restore the file or pass a checkpoint prefix such as {str(bundles[-1])[:-6]}")
        return None
    try:
        state = tf.train.get_checkpoint_state(str(folder))
    except Exception as e:  # a text-proto parse error surfaces as several exception types
        raise UserError(f"{index} is damaged ({type(e).__name__}); delete it and pass a checkpoint "
                        f"prefix such as {str(bundles[-1])[:-6] if bundles else folder / 'ckpt-N'}") from None
    if state is None or not state.model_checkpoint_path:
        raise UserError(f"{index} is damaged (it names no checkpoint); delete it to let the run be found again")
    return state.model_checkpoint_path  # get_checkpoint_state already put folder in front


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
