"""Training on several devices or machines with tf.distribute, the RNN state carried per row.

    make_strategy(kind)              None for "none"; a MirroredStrategy over this machine's GPUs
                                     (or its CPU devices); a MultiWorkerMirroredStrategy over the
                                     machines of TF_CONFIG, made before TensorFlow's first op
    read_tf_config(text)             TF_CONFIG checked: (cluster, task type, task index)
    scope / is_chief / peers_watched strategy.scope() or nothing; who writes; a lost peer as one line
    prepare_run(run, strategy)       the batch must divide among the replicas; a non-chief worker
                                     gets a WorkerRun: it reads the run, writes only to a scratch folder
                                     (killed workers' are removed: remove_dead_scratch)
    note_replicas(run)               a line when a checkpoint resumes with another replica count

The training step itself is steps.make_train_step: built under strategy.scope(),
it runs on every replica, each on its own rows of the batch and of the carried
state (its docstring says how the work divides).

Dropout draws its masks from a seed generator whose state is a mirrored
variable: every replica advances its own copy alike, and folds its replica id
into the seed (model.Dropout), so the replicas drop different units and the
state saved in a checkpoint is the same on all.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from charrnn import checkpoints, run_files, runs
from charrnn.errors import UserError
from charrnn.lock import RunLock, is_locked

SCRATCH, SCRATCH_GRACE = "charrnn-worker-", 10  # a non-chief worker's folder in TMPDIR; seconds
TASK_TYPES = ("chief", "worker")  # what MultiWorkerMirroredStrategy trains with
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


# ---------------------------------------------------------------- the strategy

def make_strategy(kind):
    """The tf.distribute strategy of --distribute `kind`, or None for "none".

    "mirrored": every GPU of this machine, or its CPU devices when it has no GPU
    (one, unless logical devices were configured). "multi-worker": the machines
    of TF_CONFIG; TensorFlow must not have run an op yet (tf_setup.starting_tensorflow).
    """
    if kind == "none":
        return None
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    read_tf_config(os.environ.get("TF_CONFIG"))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:  # "Collective ops must be configured at program startup"
        raise UserError(f"--distribute multi-worker: {e}; create the strategy before TensorFlow runs "
                        f"an op, as rnn_train.py does") from None


def read_tf_config(text):
    """Check TF_CONFIG for multi-worker training; returns (cluster, task type, task index).

    TensorFlow reads the variable itself; this reads it first so that a mistake is
    a one-line error naming it, not a failure deep inside the strategy.
    """
    if not text:
        raise UserError(f"--distribute multi-worker needs TF_CONFIG, the cluster and this machine's place "
                        f"in it, e.g. {TF_CONFIG_EXAMPLE} (README: several machines)")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e}); e.g. {TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise UserError(f"TF_CONFIG must be a JSON object with \"cluster\" and \"task\"; e.g. {TF_CONFIG_EXAMPLE}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"TF_CONFIG has no \"cluster\" (task type -> list of host:port); e.g. {TF_CONFIG_EXAMPLE}")
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise UserError(f"TF_CONFIG cluster has {task_type!r} tasks; multi-worker training takes "
                            f"{' and '.join(TASK_TYPES)} tasks only")
        if not isinstance(addresses, list) or not addresses or not all(map(_is_address, addresses)):
            raise UserError(f"TF_CONFIG cluster {task_type!r} must be a list of host:port strings "
                            f"(got {json.dumps(addresses)})")
    if len(cluster.get("chief", [])) > 1:
        raise UserError(f"TF_CONFIG cluster has {len(cluster['chief'])} chiefs; it takes at most one")
    if "worker" not in cluster:
        raise UserError("TF_CONFIG cluster has no \"worker\" list")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f"TF_CONFIG has no \"task\" ({{\"type\": ..., \"index\": ...}}: this machine's place in "
                        f"the cluster); e.g. {TF_CONFIG_EXAMPLE}")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise UserError(f"TF_CONFIG task type {task_type!r} is not in the cluster ({', '.join(cluster)})")
    count = len(cluster[task_type])
    if not isinstance(index, int) or isinstance(index, bool):
        raise UserError(f"TF_CONFIG task index {index!r} must be an integer, 0 to {count - 1}")
    if not 0 <= index < count:
        raise UserError(f"TF_CONFIG task index {index} is out of range: the cluster has {count} {task_type} "
                        f"task{'s' * (count > 1)}, indexed 0 to {count - 1}")
    return cluster, task_type, index


def _is_address(address):
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def scope(strategy):
    """strategy.scope(), where variables are created on every replica; nothing without one."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


@contextlib.contextmanager
def peers_watched(strategy):
    """Turn an all-reduce that failed because another process of the run stopped or died
    into a one-line error: the others cannot go on without it."""
    if strategy is None:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as e:
        lines = [line.strip() for line in str(e).splitlines() if "aborted by" in line] or [checkpoints.first_line(e)]
        raise UserError(f"another process of the run stopped or failed ({lines[0]}); start every one of them "
                        f"again with --resume") from None


def is_chief(strategy):
    """Whether this process writes the run's files: always without a strategy; with one,
    only the chief of a multi-worker cluster (the "chief" task, else worker 0)."""
    return strategy is None or strategy.extended.should_checkpoint


# ---------------------------------------------------------------- the run of each process

def prepare_run(run, strategy):
    """The Run this process trains: `run` itself without a strategy.

    With one, the global batch must divide among the replicas; the chief's run
    records the replica count in config.json; a non-chief worker gets a WorkerRun.
    """
    if strategy is None:
        return run
    replicas = strategy.num_replicas_in_sync
    batch = run.config.batch_size
    if batch % replicas:
        raise UserError(f"--batch-size {batch} does not divide among the {replicas} replicas of --distribute "
                        f"{run.config.distribute}; use a multiple of {replicas}, such as "
                        f"{max(replicas, batch // replicas * replicas)}")
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)} | {"replicas": replicas}
    remove_dead_scratch()
    chief = is_chief(strategy)
    devices = ", ".join(d.rsplit("device:", 1)[-1] for d in strategy.extended.worker_devices)
    role = "" if run.config.distribute != "multi-worker" else \
        "; this worker is the chief" if chief else "; this worker writes nothing, the chief writes the run"
    print(f"--distribute {run.config.distribute}: {replicas} replica{'s' * (replicas > 1)}, {batch // replicas} rows "
          f"of the batch each, here on {devices}{role}", file=sys.stderr)
    return runs.Run(**fields) if chief else WorkerRun(**fields)


@dataclass
class WorkerRun(runs.Run):
    """The run as a non-chief worker sees it: it reads the run's files and checkpoint
    as the chief does, and writes nothing there. It writes no checkpoint (the chief's
    hold every replica's rows), its TensorBoard files go to a scratch folder removed
    when it ends (a killed worker's by the next run: remove_dead_scratch), and the
    run's lock is the chief's."""

    scratch: Path | None = None

    def log_dirs(self):
        return self.scratch / "train", self.scratch / "validation"

    def managers(self, checkpoint, size=None):
        return NoCheckpoints(), NoCheckpoints()

    def save_files(self, model_config, vocab, files):
        pass

    @contextlib.contextmanager
    def claimed(self):
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{self.name}-") as scratch:
            self.scratch = Path(scratch)
            with RunLock(scratch):  # held while this worker lives: the next one knows a dead one's by it
                yield self


def remove_dead_scratch():
    """Remove the scratch folders in TMPDIR of workers that were killed: those whose lock
    no process holds. A folder whose lock is younger than a few seconds may be a worker's
    that is taking it this instant, and is left for the next run."""
    for folder in Path(tempfile.gettempdir()).glob(SCRATCH + "*"):
        lock = folder / run_files.LOCK
        with contextlib.suppress(OSError):
            if (folder.is_dir() and not folder.is_symlink() and lock.is_file()
                    and time.time() - lock.stat().st_mtime > SCRATCH_GRACE and not is_locked(folder)):
                shutil.rmtree(folder, ignore_errors=True)


class NoCheckpoints:
    """A non-chief worker's stand-in for checkpoints.Manager: saves nothing, knows none."""

    latest = None
    steps = []

    def save(self, step):
        return None


def note_replicas(run):
    """Say so when a resumed checkpoint was trained with another number of replicas.

    The count is the one config.json recorded when the source run last started.
    Nothing is lost: every row keeps its state, only the rows per replica change.
    """
    if run.source is None:
        return
    before = run_files.read_json(Path(run.source) / run_files.CONFIG).get("replicas", 1)
    if before != run.replicas:
        print(f"resuming with {run.replicas} replica{'s' * (run.replicas > 1)} a checkpoint trained with {before}: "
              f"the carried state is re-split by rows, {run.config.batch_size // run.replicas} per replica (each "
              f"row keeps its state, the global batch is unchanged); the steps round differently from here than "
              f"with {before} (reduction order, dropout masks)", file=sys.stderr)
