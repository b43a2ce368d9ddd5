"""Checkpoints: what one holds, and writing and reading them safely.

A checkpoint is a tf.train.Checkpoint bundle, `ckpt-<step>.index` and
`ckpt-<step>.data-*`, in a folder whose `checkpoint` index file names the
newest ones; run.py decides which folders. This module is the only code that
knows those file names.

    training_checkpoint / weights_checkpoint   what a checkpoint holds
    Manager                                    writes them, keeps the last N
    latest / read_index / restore / verify_files   reads them, refusing damage
    write_atomically                           replaces a small file, durably

What a folder of checkpoints can survive:
- a kill at any point of a save: the bundle is written under temporary names,
  and only a complete one is named by the index; what the killed save left is
  removed by the next Manager of the folder (built with the run's lock held);
- power loss: a checkpoint's files and its folder are fsynced before the index
  that names it is replaced (a temporary file, fsynced, renamed, folder fsynced);
- a full disk: the save ends in a one-line error, its partial files removed,
  the previous checkpoints and the index untouched;
- a hostile folder: the index is read as untrusted text, and only names
  `ckpt-<int>` directly inside the folder are used, so no path written in a
  run folder makes a tool read, write or delete a file outside it.
Loading reads tensors only: no pickle, no Lambda layers, no code from the checkpoint.
"""

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from charrnn.errors import UserError

INDEX = "checkpoint"
PREFIX = "ckpt"
# A run's best validation loss before its first validation: the largest float, not inf,
# so that no checkpoint holds NaN or Inf.
NOT_VALIDATED = float(np.finfo(np.float64).max)
VOCABULARY = "vocabulary/sha256/.ATTRIBUTES/VARIABLE_VALUE"  # absent from checkpoints of earlier versions
RETIRED = ("epoch", "batch", "nonfinite")  # progress counters of earlier versions: epoch and batch follow from the step

_NAME = re.compile(PREFIX + r"-(\d+)")
_BUNDLE_FILE = re.compile(PREFIX + r"-(\d+)\.(index|data-\d+-of-\d+)")
# What a killed or failed save leaves: TensorFlow's ckpt-N_temp/ folder and
# .tempstateNNN files, and this module's index.tmp.
_warned = set()  # (index, its text) already warned about in this process
_LEFTOVER = re.compile(PREFIX + r"-\d+(_temp.*|\.(index|data-\d+-of-\d+)\.tempstate\d+)|" + re.escape(INDEX) + r"\.tmp")


# ---------------------------------------------------------------- checkpoint contents

def training_checkpoint(model, optimizer, progress, states, vocabulary):
    """Everything an exact resume needs, as one tf.train.Checkpoint.

    weights: the model's variables under implementation-independent names, so
             a checkpoint written by the CPU kernels loads into cuDNN layers;
    rng:     the dropout seed generators' states (save_weights misses them);
    optimizer: Adam's slots and iteration count;
    progress:  the step, the best validation loss, the run's clock (dict of tf.Variable);
    state:     the RNN state carried into the next batch;
    vocabulary: the fingerprint (Vocabulary.fingerprint, hex) of the vocabulary the
               rows of the weights stand for, checked against vocab.json on loading;
               kept as int64s, which every tf.distribute strategy can broadcast.
    """
    sha256 = np.frombuffer(bytes.fromhex(vocabulary), ">i8").astype(np.int64)  # [4]
    return tf.train.Checkpoint(
        weights=tf.train.Checkpoint(**model.named_variables()),
        rng=tf.train.Checkpoint(**model.rng_variables()),
        optimizer=optimizer,
        progress=tf.train.Checkpoint(**progress),
        state=tf.train.Checkpoint(**{f"layer_{i}": s for i, s in enumerate(states)}),
        vocabulary=tf.train.Checkpoint(sha256=tf.Variable(sha256, trainable=False)),
    )


def weights_checkpoint(model):
    """The weights alone: what generation needs from a training checkpoint."""
    return tf.train.Checkpoint(weights=tf.train.Checkpoint(**model.named_variables()))


def size_of(variables):
    """Bytes the values of these variables take in a checkpoint (the index adds little)."""
    return sum(int(np.prod(tuple(v.shape))) * tf.as_dtype(v.dtype).size for v in variables)


# ---------------------------------------------------------------- the index

def read_index(folder):
    """The steps of the checkpoints that folder's index names, oldest first and the
    newest last; None when the folder has no index.

    The index is untrusted text. An entry that is not a name `ckpt-<int>` of this
    folder (`../other/ckpt-5`, an absolute path) is ignored with a warning; one
    given as the newest checkpoint, or a file that is not an index, is an error.
    """
    return _parse_index(folder)[0]


def _parse_index(folder):
    """(steps or None, the entries refused) of folder's index; see read_index."""
    folder = Path(folder)
    index = folder / INDEX
    try:
        text = read_regular_file(index, 1 << 20).decode("utf-8")
    except FileNotFoundError:
        return None, []
    except (OSError, UnicodeError) as e:
        raise _damaged(index, getattr(e, "strerror", None) or str(e)) from None
    newest, listed, refused = None, [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = (part.strip() for part in line.partition(":"))
        if not sep:
            raise _damaged(index, f"line {number} is not `field: value`")
        if key in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            if not re.fullmatch(r'"[^"\n]*"', value):
                raise _damaged(index, f"line {number} holds no quoted name")
            match = _NAME.fullmatch(value[1:-1])
            if match is None:
                refused.append(value[1:-1])
                if key == "model_checkpoint_path":
                    raise UserError(f"{index} names {value} as the newest checkpoint, but only names "
                                    f"{PREFIX}-<step> of {folder} itself are read; delete the file and pass a "
                                    f"checkpoint prefix such as {_newest_on_disk(folder) or folder / 'ckpt-N'}")
            elif key == "model_checkpoint_path":
                newest = int(match.group(1))
            else:
                listed.append(int(match.group(1)))
        elif key in ("all_model_checkpoint_timestamps", "last_preserved_timestamp"):
            try:
                float(value)
            except ValueError:
                raise _damaged(index, f"line {number} holds no number") from None
        else:
            raise _damaged(index, f"unknown field {key[:40]!r} on line {number}")
    if newest is None:
        raise UserError(f"{index} is damaged (it names no checkpoint); delete it and pass a checkpoint "
                        f"prefix such as {_newest_on_disk(folder) or folder / 'ckpt-N'}")
    if refused and (str(index), text) not in _warned:
        _warned.add((str(index), text))
        print(f"warning: {index} lists {', '.join(map(repr, refused))[:300]}, which are not checkpoints of "
              f"{folder}: ignored", file=sys.stderr)
    steps = list(dict.fromkeys(s for s in listed if s != newest)) + [newest]
    return steps, refused


def _damaged(index, why):
    return UserError(f"{index} is damaged ({why}); delete it and pass a checkpoint prefix such as "
                     f"{_newest_on_disk(index.parent) or index.parent / 'ckpt-N'}")


def _write_index(folder, steps):
    """Replace folder's index with one naming these steps, the newest last, durably."""
    names = [f"{PREFIX}-{step}" for step in steps]
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    write_atomically(Path(folder) / INDEX, ("\n".join(lines) + "\n").encode())


def read_regular_file(path, limit):
    """The bytes of a file of a run folder, read as untrusted input: a regular file (not a
    link to elsewhere, not a device) of at most `limit` bytes, else OSError."""
    # a link: OSError (ELOOP); a named pipe: opened without waiting for a writer, then refused
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {describe_size(limit)}")
    return data


def write_atomically(path, data: bytes):
    """Replace the file at path with data: a crash or a power loss leaves the old file
    or the new one, never a mix, and the new one is on disk when this returns.

    The temporary file path.tmp is created afresh (a leftover, or a link planted
    there, is removed first, never written through) and removed on failure.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_folder(folder):
    """Flush a folder's entries (the names of files just created or renamed) to disk.
    Windows cannot open a folder, and flushes its entries with the files."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if os.name == "nt":
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path):
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bundle_files(folder, step=None):
    """{path: step} of the checkpoint files in folder (of one step, when given)."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            match = _BUNDLE_FILE.fullmatch(entry.name)
            if match and (step is None or int(match.group(1)) == step):
                found[Path(folder) / entry.name] = int(match.group(1))
    return found


def _newest_on_disk(folder):
    """The prefix of the checkpoint in folder with the highest step that has an .index, or None."""
    steps = [s for path, s in _bundle_files(folder).items() if path.suffix == ".index"]
    return str(Path(folder) / f"{PREFIX}-{max(steps)}") if steps else None


def is_leftover(name):
    """Whether a file name in a checkpoint folder is what an interrupted save left."""
    return _LEFTOVER.fullmatch(name) is not None


def describe_size(n):
    """n bytes in words: 1.5 MB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------- writing

class Manager:
    """Writes the checkpoints of one folder as ckpt-<step>, keeps the newest `keep`,
    and owns the folder's index.

    tf.train.CheckpointManager is not used: it deletes whatever paths an index
    lists, writes the index without fsync, and reads it with paths joined onto the
    folder. Build a Manager only while holding the run's lock: it removes what a
    killed save left in the folder, and rewrites an index that named foreign paths.
    size: the estimated bytes of one checkpoint, for the error on a full disk.
    """

    def __init__(self, checkpoint, folder, keep, size=None):
        self.checkpoint, self.folder, self.keep, self.size = checkpoint, Path(folder), keep, size
        steps, refused = _parse_index(self.folder)
        self.steps = steps or []
        self._remove_leftovers(unlisted=steps is not None)
        if refused:
            _write_index(self.folder, self.steps)

    @property
    def latest(self):
        """The prefix of the newest checkpoint of the folder, or None."""
        return str(self.folder / f"{PREFIX}-{self.steps[-1]}") if self.steps else None

    def save(self, step):
        """Write the checkpoint of `step` durably, name it in the index, then delete
        the ones beyond `keep`; returns its prefix. Raises UserError when it cannot be
        written (a full disk), with its partial files removed."""
        prefix = self.folder / f"{PREFIX}-{step}"
        steps = [s for s in self.steps if s != step] + [step]
        try:
            self.checkpoint.save_counter.assign_add(1)  # as tf.train.CheckpointManager did
            created = not self.folder.exists()
            self.checkpoint.write(str(prefix))
            for path in _bundle_files(self.folder, step):
                _fsync_file(path)
            fsync_folder(self.folder)  # the renames that put the files in place
            if created:
                fsync_folder(self.folder.parent)
            _write_index(self.folder, steps[-self.keep:])
        except (tf.errors.OpError, OSError) as e:
            if step not in self.steps:
                for path in _bundle_files(self.folder, step):
                    path.unlink(missing_ok=True)
            self._remove_leftovers(unlisted=False)
            raise self._write_error(prefix, e) from None
        for old in steps[:-self.keep]:  # the .index first: a reader then finds the checkpoint gone, not damaged
            for path in sorted(_bundle_files(self.folder, old), key=lambda path: path.suffix != ".index"):
                path.unlink(missing_ok=True)
        self.steps = steps[-self.keep:]
        return str(prefix)

    def _write_error(self, prefix, e):
        kept = f"the last good checkpoint, {self.latest}, is intact" if self.latest else "no checkpoint was kept"
        full = isinstance(e, tf.errors.ResourceExhaustedError) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        if full:
            need = f" (a checkpoint needs about {describe_size(self.size)})" if self.size else ""
            return UserError(f"no space left in {self.folder} to write {prefix.name}{need}; {kept}: free some space, "
                             f"then resume the run")
        return UserError(f"cannot write {prefix} ({first_line(e)[:200]}); {kept}")

    def _remove_leftovers(self, unlisted):
        """Remove what killed or failed saves left: temporary files and folders, and
        with unlisted, the bundles the index does not name that are newer than its
        newest (a save killed before it reached the index) or, when the index is
        full, older than its oldest (a rotation killed before it deleted them)."""
        removed = 0
        newest = max(self.steps, default=None)
        oldest = min(self.steps) if len(self.steps) >= self.keep else 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                path = Path(entry.path)
                match = _BUNDLE_FILE.fullmatch(entry.name)
                stale = (unlisted and newest is not None and match is not None
                         and not oldest <= int(match.group(1)) <= newest)
                if not (is_leftover(entry.name) or stale):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    removed += entry.stat(follow_symlinks=False).st_size
                    path.unlink(missing_ok=True)
        if removed:
            print(f"removed {describe_size(removed)} of files that {self.folder / INDEX} does not name, left by an "
                  f"interrupted save", file=sys.stderr)


# ---------------------------------------------------------------- reading

def verify_files(prefix):
    """Read every tensor of a checkpoint; raise UserError naming a damaged file.
    Returns the checkpoint's reader."""
    index = prefix + ".index"
    if not os.path.isfile(index):
        newest = _newest_on_disk(Path(prefix).parent)
        raise UserError(f"{index} is missing; " + (f"pass another checkpoint, such as {newest}" if newest else
                                                   "no other checkpoint is left in its folder"))
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
    return reader


def restore(checkpoint, prefix, what="checkpoint", extra_ok=False, vocabulary=None, optional=()):
    """Restore every object of `checkpoint` from `prefix`; a partial restore is an error.

    extra_ok: the file may hold sections that `checkpoint` does not ask for
    (generation reads only the weights of a training checkpoint), but every
    entry of the sections it does ask for must be used: weights of a layer the
    model does not have are an error, not ignored.
    vocabulary: (fingerprint, vocab file) that the checkpoint's recorded
    vocabulary must match; a checkpoint written before fingerprints has none.
    optional: progress entries that an earlier version's checkpoint may lack (they keep
    their values); the counters of RETIRED that it may hold are read and dropped.
    """
    reader = verify_files(prefix)
    saved = set(reader.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    if vocabulary is not None and VOCABULARY in saved:
        fingerprint, vocab_file = vocabulary
        if np.asarray(reader.get_tensor(VOCABULARY), ">i8").tobytes().hex() != fingerprint:
            raise UserError(f"{vocab_file} is not the vocabulary {prefix} was trained with (other characters, "
                            f"or another order); restore the run's vocab.json from a backup")
    sections = tf.train.TrackableView(checkpoint).children(checkpoint)
    kept = {k: v for k, v in sections.items() if k != "save_counter"}
    if "vocabulary" in kept and VOCABULARY not in saved:  # written by an earlier version
        del kept["vocabulary"]
    if "progress" in kept:
        kept["progress"] = _progress_saved(kept["progress"], saved, optional)
    if any(kept.get(k) is not v for k, v in sections.items() if k != "save_counter"):
        checkpoint = tf.train.Checkpoint(**kept)
    for name, section in sections.items() if extra_ok else ():  # the sections asked for are used whole
        expected = {f"{name}/{key}" for key in _variable_keys(section)}
        unused = sorted(k.split("/.ATTRIBUTES")[0].replace(".S", "/") for k in saved
                        if k.startswith(name + "/") and k not in expected)
        if unused and name != "save_counter":
            raise UserError(f"{prefix} holds {', '.join(unused)[:200]}, which this {what} does not have: "
                            f"it is not the model the checkpoint was trained with")
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
        shapes = _SHAPE_MISMATCH.search(str(e))
        if shapes:  # a config.json or vocab.json edited, or copied from another run
            raise UserError(f"{prefix} does not match this {what}: its {shapes['name']} has shape {shapes['saved']}, the "
                            f"model's {shapes['model']}; restore the run's config.json and vocab.json from a "
                            f"backup") from None
        raise UserError(f"{prefix} cannot be restored ({first_line(e)[:300]})") from None


# TensorFlow's words for a saved tensor whose shape is not the variable's
_SHAPE_MISMATCH = re.compile(r"incompatible tensor with shape (?P<saved>\([^)]*\)) when attempting to restore "
                             r"variable with shape (?P<model>\([^)]*\)) and name (?P<name>[^\s:]+)")


def _progress_saved(progress, saved, optional):
    """The progress section as `saved` holds it: without the optional entries it lacks,
    with stand-ins for the retired counters it has; the section itself when it matches."""
    entries = tf.train.TrackableView(progress).children(progress)
    key = "progress/{}/.ATTRIBUTES/VARIABLE_VALUE".format
    missing = {name for name in optional if key(name) not in saved}
    retired = [name for name in RETIRED if key(name) in saved and name not in entries]
    if not missing and not retired:
        return progress
    return tf.train.Checkpoint(**{name: v for name, v in entries.items() if name not in missing},
                               **{name: tf.Variable(0, dtype=tf.int64) for name in retired})


def _variable_keys(trackable, view=None):
    """The checkpoint keys of the variables under a tf.train.Checkpoint of variables."""
    view = view or tf.train.TrackableView(trackable)
    if isinstance(trackable, tf.Variable):
        return [".ATTRIBUTES/VARIABLE_VALUE"]
    keys = []
    for name, child in view.children(trackable).items():
        escaped = name.replace(".", "..").replace("/", ".S")
        keys += [f"{escaped}/{key}" for key in _variable_keys(child, view)]
    return keys


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

    A `checkpoint` index file that cannot be parsed, or one missing beside
    checkpoint files, is an error rather than "no checkpoint": a silent fresh
    start would write over the run's checkpoints.
    """
    folder = Path(folder)
    steps = read_index(folder)
    if steps is None:
        newest = _newest_on_disk(folder)
        if newest:
            raise UserError(f"{folder / INDEX} is missing but {folder} holds checkpoints; "
                            f"restore the file or pass a checkpoint prefix such as {newest}")
        return None
    return str(folder / f"{PREFIX}-{steps[-1]}")


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
