"""Checkpoint files: the one module that knows their names and formats.

A run lives in `checkpoints/<run>/`:

    config.json      model and training configuration (JSON, never pickle)
    vocab.json       the vocabulary, so the run decodes its own output
    corpus.json      manifest of the training files: names, sizes, sha256
    checkpoint       tf.train.CheckpointManager's index of the files below
    ckpt-<step>.*    the last few checkpoints (tf.train.Checkpoint bundles)
    best/ckpt-<step>.*   the checkpoint with the lowest validation loss
    .lock            held (flock) by the process training into the run

tf.train.Checkpoint writes to temporary names and renames them into place, so a
kill during a save never leaves a half-written checkpoint behind. Loading reads
tensors only: no pickle, no Lambda layers, no code from the checkpoint.
"""

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from config import ModelConfig
from errors import UserError
from model import CharRNN
from txt_utils import Vocabulary

CONFIG, VOCAB, CORPUS, LOCK, BEST = "config.json", "vocab.json", "corpus.json", ".lock", "best"
FORMAT_VERSION = 1
# A run's best validation loss before its first validation: the largest float, not inf,
# so that no checkpoint holds NaN or Inf.
NOT_VALIDATED = float(np.finfo(np.float64).max)


# ---------------------------------------------------------------- JSON files

def write_json(path, obj):
    """Write JSON atomically: a temporary file renamed over the target."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: this run directory is incomplete") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); restore it from a backup") from None


def save_run_files(run_dir, config, vocab, corpus_manifest):
    """Write the JSON files that travel beside the checkpoints of a run."""
    write_json(Path(run_dir) / CONFIG, {"format_version": FORMAT_VERSION, **config})
    write_json(Path(run_dir) / VOCAB, vocab.to_json())
    write_json(Path(run_dir) / CORPUS, corpus_manifest)


def load_run_files(run_dir):
    """Return (config dict, Vocabulary, corpus manifest) of a run."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{run_dir / CONFIG} is damaged (not a JSON object); restore it from a backup")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{run_dir / CONFIG} has format_version {config.get('format_version')!r}; "
                        f"this version of the tool reads format {FORMAT_VERSION}")
    try:
        vocab = Vocabulary.from_json(read_json(run_dir / VOCAB))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run_dir / VOCAB} is damaged ({e}); restore it from a backup") from None
    manifest = read_json(run_dir / CORPUS) if (run_dir / CORPUS).exists() else None
    return config, vocab, manifest


def model_config(run_dir, config):
    try:
        return ModelConfig.from_json(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{Path(run_dir) / CONFIG}: bad model configuration ({e})") from None


# ---------------------------------------------------------------- finding runs

def is_run(path):
    return (Path(path) / CONFIG).is_file()


def newest_run(checkpoint_dir, best=False):
    """The run that wrote a checkpoint last (counting those in its best/ folder when
    best is true), or None.

    Runs are ordered by the times of their checkpoint files, and only the newest
    run's index file is read: a damaged index in another run is no obstacle.
    """
    written = {run: _last_written(run, best) for run in Path(checkpoint_dir).glob("*") if is_run(run)}
    written = {run: time for run, time in written.items() if time is not None}
    find = generation_checkpoint if best else latest_checkpoint
    for run in sorted(written, key=written.get, reverse=True):
        if find(run):
            return run
    return None


def _last_written(run, best=False):
    """When the run wrote its newest checkpoint (counting best/ when best), or None."""
    patterns = ("ckpt-*.index", f"{BEST}/ckpt-*.index") if best else ("ckpt-*.index",)
    return max((f.stat().st_mtime for pattern in patterns for f in Path(run).glob(pattern)), default=None)


def list_runs(checkpoint_dir):
    """A line per run under checkpoint_dir, the most recently written first: its
    name, model, the step of its newest checkpoint and its best validation loss."""
    lines = []
    for run in sorted((p for p in Path(checkpoint_dir).glob("*") if is_run(p)),
                      key=lambda p: _last_written(p, best=True) or 0, reverse=True):
        try:
            model = model_config(run, read_json(run / CONFIG))
            prefix = generation_checkpoint(run)
            if prefix is None:
                lines.append(f"{run.name:<28} {_describe(model):<14} no checkpoint yet")
                continue
            progress = tf.train.load_checkpoint(prefix)
            step = progress.get_tensor("progress/step/.ATTRIBUTES/VARIABLE_VALUE")
            best = progress.get_tensor("progress/best_val_loss/.ATTRIBUTES/VARIABLE_VALUE")
        except (UserError, tf.errors.OpError, ValueError) as e:
            lines.append(f"{run.name:<28} cannot be read: {_first_line(e)[:200]}")
            continue
        best = f"best validation {best / np.log(2):.3f} bits/char" if best < NOT_VALIDATED else "not validated"
        lines.append(f"{run.name:<28} {_describe(model):<14} step {step:<9,} {best}")
    return lines


def _describe(model):
    return f"{model.cell} {model.layers}x{model.units}"


def generation_checkpoint(run_dir):
    """The newest checkpoint of a run, or its best one while it has no other yet
    (a young run validates more often than it checkpoints); None if neither."""
    return latest_checkpoint(run_dir) or tf.train.latest_checkpoint(str(Path(run_dir) / BEST))


def latest_checkpoint(run_dir):
    """Prefix of the newest checkpoint in run_dir, or None when it has none.

    A `checkpoint` index file that cannot be parsed, or one that names missing
    files, is an error rather than "no checkpoint": a silent fresh start would
    write over the run's checkpoints.
    """
    run_dir = Path(run_dir)
    index = run_dir / "checkpoint"
    bundles = sorted(run_dir.glob("ckpt-*.index"))
    if not index.exists():
        if bundles:
            raise UserError(f"{index} is missing but {run_dir} holds checkpoints; "
                            f"restore the file or pass a checkpoint prefix such as {str(bundles[-1])[:-6]}")
        return None
    try:
        state = tf.train.get_checkpoint_state(str(run_dir))
    except Exception as e:  # a text-proto parse error surfaces as several exception types
        raise UserError(f"{index} is damaged ({type(e).__name__}); delete it and pass a checkpoint "
                        f"prefix such as {str(bundles[-1])[:-6] if bundles else run_dir / 'ckpt-N'}") from None
    if state is None or not state.model_checkpoint_path:
        raise UserError(f"{index} is damaged (it names no checkpoint); delete it to let the run be found again")
    return state.model_checkpoint_path  # get_checkpoint_state already put run_dir in front


def resolve(spec, checkpoint_dir="checkpoints"):
    """Turn a run name, run directory or checkpoint prefix into (run_dir, prefix).

    With spec None, the newest run under checkpoint_dir.
    """
    if spec is None:
        run_dir = newest_run(checkpoint_dir, best=True)
        if run_dir is None:
            raise UserError(f"no checkpoint found under {checkpoint_dir}/; train one first with "
                            f"`python3 rnn_train.py` (or pass --checkpoint-dir)")
        return run_dir, generation_checkpoint(run_dir)
    path = Path(spec)
    for candidate in (path, Path(checkpoint_dir) / spec):
        if candidate.is_dir() and is_run(candidate):
            prefix = generation_checkpoint(candidate)
            if prefix is None:
                raise UserError(f"{candidate} holds no checkpoint yet; train it with "
                                f"`python3 rnn_train.py --resume {candidate.name}`")
            return candidate, prefix
        if candidate.is_dir() and is_run(candidate.parent) and candidate.name == BEST:
            prefix = tf.train.latest_checkpoint(str(candidate))
            if prefix:
                return candidate.parent, prefix
    prefix = spec[:-6] if spec.endswith(".index") else spec
    if not Path(prefix + ".index").is_file() and Path(checkpoint_dir, prefix + ".index").is_file():
        prefix = str(Path(checkpoint_dir, prefix))  # RUN/ckpt-N, under the checkpoint dir
    if Path(prefix + ".index").is_file():
        run_dir = Path(prefix).parent
        run_dir = run_dir.parent if run_dir.name == BEST else run_dir
        if not is_run(run_dir):
            raise UserError(f"{prefix} has no {CONFIG} beside it, so its model cannot be rebuilt")
        return run_dir, prefix
    raise UserError(f"{spec} is not a run name, run directory or checkpoint prefix "
                    f"(runs are listed in {checkpoint_dir}/)")


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
        raise UserError(f"{index} is damaged or unreadable ({_first_line(e)}); "
                        f"use an earlier checkpoint of the run") from None
    data = sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
    if not data:
        raise UserError(f"{prefix}.data-00000-of-00001 is missing; use an earlier checkpoint of the run")
    try:
        for name in names:
            reader.get_tensor(name)
    except Exception as e:
        raise UserError(f"{data[0]} is damaged ({_first_line(e)}); use an earlier checkpoint of the run") from None


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
        raise UserError(f"{prefix} does not match this {what}: {_first_line(e)[:300]}") from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{prefix} cannot be restored ({_first_line(e)[:300]})") from None


def load_for_generation(spec, checkpoint_dir="checkpoints", implementation="fused"):
    """Rebuild the model a checkpoint was trained with and load its weights.

    Returns (model, vocab, run_dir, prefix). Nothing has to match flags: the
    architecture comes from the run's config.json. The fused implementation is
    the default on every device: generation compiles its loop with XLA, which
    cannot compile the cuDNN kernel of the stock layers on a GPU.
    """
    run_dir, prefix = resolve(spec, checkpoint_dir)
    config, vocab, _ = load_run_files(run_dir)
    mconf = model_config(run_dir, config)
    if mconf.vocab_size != len(vocab):
        raise UserError(f"{Path(run_dir) / VOCAB} has {len(vocab)} symbols but "
                        f"{Path(run_dir) / CONFIG} says vocab_size {mconf.vocab_size}")
    model = CharRNN(mconf, implementation=implementation, initialize=False)  # restored below
    restore(weights_checkpoint(model), prefix, what="model", extra_ok=True)
    return model, vocab, run_dir, prefix


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------- the run lock

class RunLock:
    """An exclusive lock on a run directory, held for the life of the process.

    It is a kernel lock (flock) on `.lock`: when a process dies, however it
    dies, the kernel releases it, so a stale lock file is simply reclaimed.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            _lock(self.file)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"{self.path.parent} is being trained by {holder}; wait for it to finish "
                            f"or choose another --run") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def _lock(file):
    try:
        import fcntl
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows
        import msvcrt
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
