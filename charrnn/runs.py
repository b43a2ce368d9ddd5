"""A run and its folders: the one module that knows their layout and file names.

    checkpoints/<run>/                 (--checkpoint-dir)
        config.json    model and training configuration (JSON, never pickle)
        vocab.json     the vocabulary, so the run decodes its own output
        corpus.json    manifest of the training files: names, sizes, sha256
        .lock          held (flock) by the process training into the run
        checkpoint, ckpt-<step>.*      the newest checkpoints    } written by
        best/checkpoint, best/ckpt-*   the best by validation    } checkpoints.Manager
    log/<run>/train, log/<run>/validation   TensorBoard (--log-dir)

    open_run(config, resume, given)    a new run, or a resumed or forked one -> Run
    resolve / newest_run / list_runs   finding runs and checkpoints (a run plays from its best)
    load_for_generation(spec)          the model and vocabulary of a checkpoint; describe() names it

The JSON files are written atomically and read as untrusted input: a damaged
or edited file is a one-line error naming it, never a traceback.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import tensorflow as tf

from charrnn import checkpoints
from charrnn.cli import first_run
from charrnn.config import DEFAULT_DATA, FIXED_ON_RESUME, PER_PROCESS, ModelConfig, TrainConfig, flag
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.shakespeare import ensure_shakespeare
from charrnn.text import Vocabulary, find_files, read_corpus

CONFIG, VOCAB, CORPUS, LOCK, BEST = "config.json", "vocab.json", "corpus.json", ".lock", "best"
FORMAT_VERSION = 1
WRITE_PROBE = ".write-test-"  # the name of _check_writable's file, there for an instant
JSON_FILES = (CONFIG, VOCAB, CORPUS)


# ---------------------------------------------------------------- a run

@dataclass
class Run:
    """The folders and saved files of one training run.

    source: the run whose checkpoint this one starts from (the run itself when it
    is resumed, another run when forked from its checkpoint), or None for a new
    run; prefix: that checkpoint; vocab and manifest: the source's saved files;
    replicas: how many replicas train it (distribute.py), saved in config.json.
    """

    dir: Path
    log_dir: Path
    config: TrainConfig
    source: Path | None = None
    prefix: str | None = None
    vocab: Vocabulary | None = None
    manifest: dict | None = None
    replicas: int = 1

    @property
    def name(self):
        return self.dir.name

    @property
    def forked(self):
        return self.source is not None and self.source.resolve() != self.dir.resolve()

    @property
    def best_dir(self):
        return self.dir / BEST

    def log_dirs(self):
        """(train, validation): sibling folders, so TensorBoard overlays their curves."""
        return self.log_dir / "train", self.log_dir / "validation"

    @property
    def vocab_file(self):
        """The vocab.json this run's vocabulary was read from (the source run's)."""
        return (self.source or self.dir) / VOCAB

    def managers(self, checkpoint, size):
        """(newest, best) checkpoint managers of this run's folders, once there is room
        on the disk for the checkpoints of `size` bytes that the run will keep."""
        best = self.best_dir
        if best.is_symlink():  # its checkpoints would be written and deleted elsewhere
            raise UserError(f"{best} is a link to {best.resolve()}, outside the run folder; remove it")
        managers = (checkpoints.Manager(checkpoint, self.dir, self.config.keep, size),
                    checkpoints.Manager(checkpoint, best, 1, size))
        # --keep checkpoints, the best one, and the next one, written before the oldest is deleted
        count = max(1, self.config.keep + 2 - sum(len(m.steps) for m in managers))
        free = shutil.disk_usage(self.dir).free
        if free < count * size:
            raise UserError(f"{self.dir} has {checkpoints.describe_size(free)} free but the run needs about "
                            f"{checkpoints.describe_size(count * size)} more: {count} checkpoints of "
                            f"{checkpoints.describe_size(size)} (--keep {self.config.keep}, the best one and "
                            f"the one being written); free some space, lower --keep or choose another "
                            f"--checkpoint-dir")
        return managers

    def read_corpus(self):
        """The text this run trains on, checked against the source run's manifest."""
        cfg = self.config
        if cfg.data == [DEFAULT_DATA]:
            ensure_shakespeare(str(Path(DEFAULT_DATA).parent))
        try:
            corpus = read_corpus(cfg.data, vocab=self.vocab, max_vocab=cfg.max_vocab or None,
                                           validation=cfg.validation)
        except UserError as e:  # relative globs read from another folder than the run's own
            started = self.manifest.get("workdir") if isinstance(self.manifest, dict) else None
            if (started and os.path.realpath(started) != os.path.realpath(os.getcwd())
                    and not all(os.path.isabs(os.path.expanduser(g)) for g in cfg.data)):
                raise UserError(f"{e} -- run {self.source.name} was started in {started}: resume it from there") from None
            raise
        if self.source is not None:
            changed = _check_same_corpus(self.manifest, _manifest(cfg, corpus.files), cfg.allow_corpus_change,
                                         self.source)
            _warn_unknown(corpus, changed, self.source)
        return corpus

    def save_files(self, model_config: ModelConfig, vocab, files):
        """Write the JSON files that travel beside the checkpoints; files: the corpus's FileSpans."""
        config = {"format_version": FORMAT_VERSION, "model": model_config.to_json(),
                  "training": dataclasses.asdict(self.config), "replicas": self.replicas}
        write_json(self.dir / CONFIG, config)
        write_json(self.dir / VOCAB, vocab.to_json())
        write_json(self.dir / CORPUS, _manifest(self.config, files))

    @contextlib.contextmanager
    def claimed(self):
        """Create the run's folders and hold its lock while training.

        A run refused before it writes a checkpoint or a log leaves no folder to trip
        over later: the folders this call created (the run's own, then the roots) are
        removed again when nothing but the run's JSON files is in them.
        """
        cfg = self.config
        new = [d for d in (self.dir, self.log_dir, Path(cfg.checkpoint_dir), Path(cfg.log_dir)) if not d.exists()]
        _check_writable({cfg.checkpoint_dir: "--checkpoint-dir", cfg.log_dir: "--log-dir"})
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with RunLock(self.dir):
                _check_writable({self.dir: "--checkpoint-dir or --run", self.log_dir: "--log-dir or --run"})
                yield self
        except (UserError, KeyboardInterrupt):
            for d in new:
                if d.is_dir() and all(p.name in (LOCK, *JSON_FILES) for p in d.iterdir()):
                    shutil.rmtree(d, ignore_errors=True)
            raise


def open_run(cfg: TrainConfig, resume=None, given=()):
    """The run that rnn_train.py trains into.

    resume: None for a new run, "" for the newest run, a run name or folder, or a
    checkpoint prefix (or a run's best/ folder), which starts a new run from it:
    `--run NAME`, or by default SOURCE-from-STEP.
    given: the config fields given on the command line, which may override a
    resumed run's saved configuration where that is safe.
    """
    root = Path(cfg.checkpoint_dir)
    if resume is None:
        name = cfg.run or default_name(cfg)
        return Run(*_new_run_dirs(cfg, name), cfg)
    prefix = None
    if resume == "":
        source = newest_run(root)
        if source is None:
            raise UserError(f"--resume: no trained run under {root}/; start one without --resume, such as "
                            f"`{first_run(root)}`")
    elif is_run(resume) or is_run(root / resume):
        source = Path(resume) if is_run(resume) else root / resume
    else:
        try:
            source, prefix = resolve(resume, root)
        except UserError as e:
            raise UserError(f"--resume {resume}: {e}") from None
    source = Path(source)
    source_name = source.resolve().name  # also when the folder is "." or ends in "/"
    if prefix is None and "run" in given and cfg.run != source_name:
        raise UserError(f"--run names a new run, but --resume {resume or source_name} continues run {source_name}; "
                        f"to go on in a new run, resume a checkpoint: --resume {source_name}/best or "
                        f"{source_name}/ckpt-N")
    saved, vocab, manifest = load_run_files(source)
    merged = _merge(source, saved, cfg, given)
    if "data" not in given:  # paths read from a run folder are shown before they are read
        print(f"reading the data saved in {source / CONFIG}: {' '.join(merged.data)}", file=sys.stderr)
    if prefix is None:  # the run goes on in its own folders
        prefix = checkpoints.latest(source)
        if prefix is None:
            raise UserError(f"{source} holds no checkpoint to resume from; start a new run instead")
        merged.run = source_name
        return Run(source, Path(cfg.log_dir) / source_name, merged, source, prefix, vocab, manifest)
    merged.run = cfg.run or f"{source_name}-from-{checkpoints.step_of(prefix)}"
    return Run(*_new_run_dirs(merged, merged.run), merged, source, prefix, vocab, manifest)


def _merge(source, saved, cfg, given):
    """The saved training configuration, with the flags given now where they may change.

    The saved values are checked like flags, and the model section must be the one
    the training section describes: an edited file is refused, never half-used.
    """
    where = source / CONFIG
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    training = saved.get("training")
    if not isinstance(training, dict):
        raise UserError(f"{where} has no training section; restore it from a backup")
    if "max_time" in given:  # a --max-time given now replaces a saved one that is no longer accepted
        training = {**training, "max_time": cfg.max_time}
    try:
        merged = TrainConfig(**{k: v for k, v in training.items() if k in known and k not in PER_PROCESS})
        merged.check()
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{where}: a saved value is not valid ({e}); restore the file from a backup") from None
    for name in given:
        new, old = getattr(cfg, name), getattr(merged, name)
        if name in FIXED_ON_RESUME and new != old:
            raise UserError(f"{flag(name)} {new} differs from run {source.name}'s {old}; "
                            f"drop the flag to resume, or start a new run")
        if name == "data" and new != old and not cfg.allow_corpus_change:
            raise UserError(f"--data {' '.join(new)} differs from run {source.name}'s {' '.join(old)}; "
                            f"pass --allow-corpus-change to train on new text")
    for name in given:
        setattr(merged, name, getattr(cfg, name))
    for name in PER_PROCESS:
        setattr(merged, name, getattr(cfg, name))
    model = model_config(source, saved)
    if model != merged.model_config(model.vocab_size):
        raise UserError(f"{where}: the model section ({_describe(model)}) disagrees with the training section; "
                        f"restore the file from a backup")
    return merged


def default_name(cfg):
    """A new run's name: what it trains on, the model and the start time, such as
    tinyshakespeare-gru2x512-20261201-214421, so TensorBoard and --list tell runs apart."""
    return f"{data_name(cfg.data)}-{cfg.cell}{cfg.layers}x{cfg.units}-{datetime.now():%Y%m%d-%H%M%S}"


def data_name(data):
    """The stem of the first file the globs match, as a folder name may hold it; the default
    corpus, fetched on first use, is 'shakespeare'."""
    if data == [DEFAULT_DATA]:
        return "shakespeare"
    stem = Path(find_files(data)[0]).stem
    return re.sub(r"[^\w.-]+", "-", stem).strip("-.")[:40] or "data"


def _new_run_dirs(cfg, name):
    """(run folder, log folder) of a new run called name, refusing to write into another run's files."""
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--run {name!r} must be a plain folder name, without '/'")
    run_dir, log_dir = Path(cfg.checkpoint_dir) / name, Path(cfg.log_dir) / name
    for d in (run_dir, log_dir):
        if d.exists() and not d.is_dir():
            raise UserError(f"{d} is a file, not a run folder; choose another --run")
    # A folder that holds anything but a run's JSON files (checkpoints, logs) belongs to
    # another run; one left with only those files by a run refused before training may be reused.
    # While a process holds the run's lock (the chief of a multi-worker run starting at this
    # moment, or another run), the lock decides: Run.claimed refuses if it is not this run's.
    taken = [d for d in (run_dir, log_dir)
             if d.exists() and any(not _reusable(p) for p in d.iterdir())]
    if taken and is_locked(run_dir):
        taken = []
    if taken:
        raise UserError(f"{taken[0]} already exists; continue it with `--resume {name}` or choose another --run")
    return run_dir, log_dir


def _reusable(path):
    """Whether a file in the folder of a new run may stay: the files of a run that was
    refused before its first checkpoint, what an interrupted first save left, and the
    probe of _check_writable (another process's, this instant, or a killed one's)."""
    name = path.name
    return name in (LOCK, *JSON_FILES) or name.startswith(WRITE_PROBE) or checkpoints.is_leftover(name) or (
        name == BEST and path.is_dir() and not path.is_symlink()
        and all(checkpoints.is_leftover(p.name) for p in path.iterdir()))


def _check_writable(dirs):
    """Fail before any training if a folder cannot be written. dirs: {folder: flag to change}."""
    for d, flag_name in dirs.items():
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=d, prefix=WRITE_PROBE)  # a new file, never one planted there
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"cannot write to {d} ({e.strerror}); choose another {flag_name}") from None


def _manifest(cfg, files):
    return {"data": cfg.data, "workdir": os.getcwd(), "validation": cfg.validation,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]}


def _check_same_corpus(saved, current, allow, run_dir):
    """Refuse to resume on different text, naming the first file that differs.
    With allow, warn instead; returns the paths of the files that are new or changed
    (every file when the manifest is missing)."""
    if saved is None:
        if allow:
            return [f["path"] for f in current["files"]]
        raise UserError(f"{Path(run_dir) / CORPUS} is missing, so the text cannot be checked; "
                        f"pass --allow-corpus-change to resume anyway")
    if not isinstance(saved, dict) or not isinstance(saved.get("files"), list) or \
            not all(isinstance(f, dict) and "path" in f for f in saved["files"]):
        raise UserError(f"{Path(run_dir) / CORPUS} is damaged; restore it from a backup, "
                        f"or delete it and pass --allow-corpus-change")
    old = {f["path"]: f for f in saved["files"]}
    new = {f["path"]: f for f in current["files"]}
    changed = []
    for path in sorted(old.keys() | new.keys()):
        if old.get(path) != new.get(path):
            what = ("is new" if path not in old else "is gone" if path not in new else "has changed")
            if allow:
                print(f"warning: corpus file {path} {what} since run {run_dir.name} started", file=sys.stderr)
                changed += [path] if path in new else []
                continue
            raise UserError(f"corpus file {path} {what} since run {run_dir.name} started "
                            f"(see {run_dir / CORPUS}); pass --allow-corpus-change to continue on it")
    return changed


def _warn_unknown(corpus, changed, run_dir):
    """One line when new or changed text holds characters the run's vocabulary lacks:
    they all train as the one unknown symbol."""
    spans = [f for f in corpus.files if f.path in set(changed)]
    unknown = {f.path: corpus.unknown_count(f) for f in spans}
    share = {f.path: unknown[f.path] / (f.end - f.start) for f in spans if unknown[f.path]}
    if not share:
        return
    worst = sorted(share, key=share.get, reverse=True)
    print(f"warning: {sum(unknown.values()) / sum(f.end - f.start for f in spans):.1%} of the characters of the "
          f"new or changed text are not in run {run_dir.name}'s vocabulary and train as unknown: "
          + ", ".join(f"{path} ({share[path]:.1%})" for path in worst[:3])
          + (f" and {len(worst) - 3} more files" if len(worst) > 3 else ""), file=sys.stderr)


# ---------------------------------------------------------------- JSON files

def write_json(path, obj):
    """Write JSON atomically and durably (checkpoints.write_atomically); a full disk
    is a one-line error, with no temporary file left."""
    try:
        checkpoints.write_atomically(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); free some space or choose another "
                        f"--checkpoint-dir") from None


def read_json(path):
    """A run's JSON file, read as untrusted input (checkpoints.read_regular_file)."""
    path = Path(path)
    try:
        return json.loads(checkpoints.read_regular_file(path, 1 << 28).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: this run folder is incomplete") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); restore it from a backup") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); restore it from a backup") from None


def load_run_files(run_dir):
    """Return (config dict, Vocabulary, corpus manifest or None) of a run, each read once."""
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
    """The ModelConfig of a run's config.json contents, checked: also that its weights
    fit in this machine's memory, before anything is built."""
    try:
        model = ModelConfig.from_json(config["model"])
        model.check_fits()
        return model
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
        head = f"{run.name:<28} {_describe(model_config(run, saved)):<14} {_data_of(saved):<24}"
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


def _describe(model):
    return f"{model.cell} {model.layers}x{model.units}"


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
    mconf = model_config(run_dir, config)
    if mconf.vocab_size != len(vocab):
        raise UserError(f"{Path(run_dir) / VOCAB} has {len(vocab)} symbols but "
                        f"{Path(run_dir) / CONFIG} says vocab_size {mconf.vocab_size}")
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


READ_TRIES = 10  # a run saving every step rotates a checkpoint away every few tenths of a second


def describe(run_dir, prefix):
    """The checkpoint read, and why, for the line a tool prints: "RUN/best/ckpt-N (the
    run's best by validation loss)"."""
    if Path(prefix).parent.name == BEST:
        return f"{prefix} (the run's best by validation loss)"
    with contextlib.suppress(UserError):  # a damaged best/ index was not asked for
        if checkpoints.latest(Path(run_dir) / BEST) is None:
            return f"{prefix} (the run's newest: it has no best/ checkpoint)"
    return prefix


# ---------------------------------------------------------------- the lock

class RunLock:
    """An exclusive lock on a run folder, held for the life of the process.

    It is a kernel lock (flock) on `.lock`: when a process dies, however it
    dies, the kernel releases it, so a stale lock file is simply reclaimed.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.file = None

    def __enter__(self):
        try:  # never through a link planted in the folder
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise UserError(f"cannot open {self.path} ({e.strerror}): training into a run needs a writable "
                            f"folder; make it writable, or pass its checkpoint to --resume with another "
                            f"--checkpoint-dir") from None
        self.file = open(fd, "r+")
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


def is_locked(run_dir):
    """Whether a process holds the lock of run_dir (RunLock) now."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with open(fd, "r+") as file:  # closing releases a lock taken here
        try:
            _lock(file)
        except OSError:
            return True
    return False


def _lock(file):
    try:
        import fcntl
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows
        import msvcrt
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
