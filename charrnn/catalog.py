"""Finding runs and their checkpoints, and loading one to generate from.

    list_runs(checkpoint_dir)          rnn_play.py --list: a line per run
    resolve(spec) / newest_run         a RUN, RUN/best, RUN/ckpt-N or prefix -> (run folder, checkpoint)
    best_or_newest(run_dir)            the checkpoint a run plays from: its best by validation
    load_for_generation(spec)          the model and vocabulary of a checkpoint; describe() names it

A run folder's layout and JSON files are run_files.py's.
"""

import contextlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from charrnn import checkpoints
from charrnn.cli import first_run
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.run_files import BEST, CONFIG, VOCAB, describe_model, is_run, load_run_files, model_config, read_json

READ_TRIES = 10  # a run saving every step rotates a checkpoint away every few tenths of a second


def newest_run(checkpoint_dir, best=False):
    """The run that wrote a checkpoint last (counting those in its best/ folder when
    best is true), or None.

    Runs are ordered by the times of their checkpoint files, and only the newest
    run's index file is read: a damaged index in another run is no obstacle.
    """
    written = {run: _last_written(run, best) for run in Path(checkpoint_dir).glob("*") if is_run(run)}
    written = {run: time for run, time in written.items() if time is not None}
    find = generation_checkpoint if best else checkpoints.latest
    for run in sorted(written, key=written.get, reverse=True):
        if trained(find(run)):
            return run
    return None


def trained(prefix):
    """Whether a checkpoint holds trained weights. A new run stopped before its first step (its
    --max-time spent on the start-up, a Ctrl-C) saved step 0: never the newest run to play or resume."""
    return prefix is not None and checkpoints.step_of(prefix) > 0


def _last_written(run, best=False):
    """When the run wrote its newest checkpoint (counting best/ when best), or None."""
    folders = (run, Path(run) / BEST) if best else (run,)
    return max((checkpoints.last_written(folder) or 0 for folder in folders), default=0) or None


def list_runs(checkpoint_dir):
    """A line per run under checkpoint_dir, the most recently trained first and runs that
    trained no step last: its name, model, data, the step of its newest checkpoint and its
    best validation loss."""
    found = [p for p in Path(checkpoint_dir).glob("*") if is_run(p)]
    return [_run_line(run) for run in sorted(found, key=_listing_order, reverse=True)]


def _listing_order(run):
    try:
        done = trained(generation_checkpoint(run))
    except (UserError, ValueError):  # a damaged index: listed, and said so, with the untrained
        done = False
    return done, _last_written(run, best=True) or 0


def _run_line(run):
    try:
        saved = read_json(run / CONFIG)
        head = f"{run.name:<28} {describe_model(model_config(run, saved)):<14} {_data_of(saved):<24}"
        prefix = generation_checkpoint(run)
        if prefix is None:
            return f"{head} no checkpoint yet"
        step, best = checkpoints.progress_of(prefix)
    except (UserError, tf.errors.OpError, ValueError) as e:
        return f"{run.name:<28} cannot be read: {checkpoints.first_line(e)[:200]}"
    if step == 0:
        return f"{head} step 0, untrained"
    best = (f"best validation {best:.3f} nats ({best / np.log(2):.3f} bits/char)"
            if best < checkpoints.NOT_VALIDATED else "not validated")
    return f"{head} step {step:<9,} {best}"


def _data_of(saved, width=40):
    """The data globs a run's config.json names, shortened from the left to width; '?' for a
    config without them."""
    training = saved.get("training") if isinstance(saved, dict) else None
    data = training.get("data") if isinstance(training, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        return "data ?"
    text = " ".join(data)
    return "data " + (text if len(text) <= width else "..." + text[-(width - 3):])


def generation_checkpoint(run_dir):
    """The newest checkpoint of a run, or its best one while it has no other yet
    (a young run validates more often than it checkpoints); None if neither."""
    return checkpoints.latest(run_dir) or checkpoints.latest(Path(run_dir) / BEST)


def best_or_newest(run_dir):
    """The checkpoint a run is played from: its best by validation when it has one (the
    newest may have overfit), else its newest; None if neither."""
    return checkpoints.latest(Path(run_dir) / BEST) or checkpoints.latest(run_dir)


def resolve(spec, checkpoint_dir="checkpoints"):
    """Turn a run name, run folder or checkpoint prefix into (run folder, prefix).

    With spec None, the newest run under checkpoint_dir. A run is read from its best
    checkpoint (best_or_newest); RUN/best, RUN/ckpt-N or a prefix name one.
    """
    if spec is None:
        run_dir = newest_run(checkpoint_dir, best=True)
        if run_dir is None:
            raise UserError(f"no trained checkpoint found under {checkpoint_dir}/; train a first model in "
                            f"minutes with `{first_run(checkpoint_dir)}` (or pass --checkpoint-dir)")
        return run_dir, best_or_newest(run_dir)
    path = Path(spec)
    for candidate in (path, Path(checkpoint_dir) / spec):
        if candidate.is_dir() and is_run(candidate):
            prefix = best_or_newest(candidate)
            if prefix is None:
                raise UserError(f"{candidate} holds no checkpoint yet (a run writes its first at its first "
                                f"validation); wait for it, or train a first model with `{first_run(checkpoint_dir)}`")
            return candidate, prefix
        if candidate.is_dir() and is_run(candidate.parent) and candidate.name == BEST:
            prefix = checkpoints.latest(candidate)
            if prefix:
                return candidate.parent, prefix
        run = candidate.parent if candidate.name == BEST else candidate
        if candidate.is_dir() and (any(candidate.glob("ckpt-*.index")) or any(candidate.glob(f"{BEST}/ckpt-*.index"))):
            raise UserError(f"{candidate} holds checkpoints but {run} has no {CONFIG}, so their model cannot be "
                            f"rebuilt; restore {run / CONFIG} from a backup")
    prefix = spec[:-6] if spec.endswith(".index") else spec
    if not Path(prefix + ".index").is_file() and Path(checkpoint_dir, prefix + ".index").is_file():
        prefix = str(Path(checkpoint_dir, prefix))  # RUN/ckpt-N, under the checkpoint folder
    if Path(prefix + ".index").is_file():
        run_dir = Path(prefix).parent
        run_dir = run_dir.parent if run_dir.name == BEST else run_dir
        if not is_run(run_dir):
            raise UserError(f"{prefix} has no {CONFIG} beside it, so its model cannot be rebuilt")
        return run_dir, prefix
    raise UserError(f"{spec} is not a run name, run folder or checkpoint prefix "
                    f"(runs are listed in {checkpoint_dir}/)")


def load_for_generation(spec, checkpoint_dir="checkpoints", implementation="fused"):
    """Rebuild the model a checkpoint was trained with and load its weights.

    Returns (model, vocab, run folder, prefix); describe(run folder, prefix) says which
    checkpoint that is, for the line a tool prints. Nothing has to match flags: the
    architecture comes from the run's config.json. The fused implementation is
    the default on every device: generation compiles its loop with XLA, which
    cannot compile the cuDNN kernel of the stock layers on a GPU.
    """
    run_dir, prefix = resolve(spec, checkpoint_dir)
    config, vocab, _ = load_run_files(run_dir)
    mconf = model_config(run_dir, config, vocab)
    model = CharRNN(mconf, implementation=implementation, initialize=False)  # restored below
    for _ in range(READ_TRIES):
        try:
            checkpoints.restore(checkpoints.weights_checkpoint(model), prefix, what=f"model ({run_dir / CONFIG})",
                                extra_ok=True, vocabulary=(vocab.fingerprint(), run_dir / VOCAB))
            return model, vocab, run_dir, prefix
        except UserError as e:
            # A run in training may rotate away the checkpoint its index just named
            # (--keep, and best/ at every new best): read the index again.
            if Path(prefix + ".index").exists():
                raise  # still there: damaged, not rotated
            try:
                run_dir, newer = resolve(spec, checkpoint_dir)
            except UserError:
                break  # a checkpoint named by the user, there a moment ago
            if newer == prefix:
                raise e from None  # still the one the index names: missing, not rotated
            prefix = newer
    raise UserError(f"{prefix} was rotated away (deleted by the run training into {run_dir}, which keeps only its "
                    f"newest checkpoints) while it was being read; try again, or name the run rather than a "
                    f"checkpoint of it")


def describe(run_dir, prefix):
    """The checkpoint read, and why, for the line a tool prints: "RUN/best/ckpt-N (the
    run's best by validation loss)"."""
    if Path(prefix).parent.name == BEST:
        return f"{prefix} (the run's best by validation loss)"
    with contextlib.suppress(UserError):  # a damaged best/ index was not asked for
        if checkpoints.latest(Path(run_dir) / BEST) is None:
            return f"{prefix} (the run's newest: it has no best/ checkpoint)"
    return prefix
