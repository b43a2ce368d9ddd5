"""The run that rnn_train.py trains into: a new run, or a resumed or forked one.

    open_run(config, resume, given)    a new run, or a resumed or forked one -> Run
    Run                                its folders, managers, corpus and saved files; claimed() holds its lock

The folder's layout and JSON files are run_files.py's, the corpus check
corpus_check.py's, the lock lock.py's; finding a run to resume is catalog.py's.
"""

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from charrnn import catalog, checkpoints, corpus_check
from charrnn.cli import first_run
from charrnn.config import DEFAULT_DATA, FIXED_ON_RESUME, PER_PROCESS, ModelConfig, TrainConfig, flag
from charrnn.errors import UserError
from charrnn.lock import RunLock, is_locked
from charrnn.run_files import (BEST, CONFIG, CORPUS, FORMAT_VERSION, JSON_FILES, LOCK, VOCAB, describe_model, is_run,
                               load_run_files, model_config, write_json)
from charrnn.shakespeare import ensure_shakespeare
from charrnn.text import Vocabulary, find_files, read_corpus

WRITE_PROBE = ".write-test-"  # the name of _check_writable's file, there for an instant


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
            corpus_check.check_resumed(self.manifest, cfg, corpus, self.source)
        return corpus

    def save_files(self, model_config: ModelConfig, vocab, files):
        """Write the JSON files that travel beside the checkpoints; files: the corpus's FileSpans."""
        config = {"format_version": FORMAT_VERSION, "model": model_config.to_json(),
                  "training": dataclasses.asdict(self.config), "replicas": self.replicas}
        write_json(self.dir / CONFIG, config)
        write_json(self.dir / VOCAB, vocab.to_json())
        write_json(self.dir / CORPUS, corpus_check.manifest(self.config, files))

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
        source = catalog.newest_run(root)
        if source is None:
            raise UserError(f"--resume: no trained run under {root}/; start one without --resume, such as "
                            f"`{first_run(root)}`")
    elif is_run(resume) or is_run(root / resume):
        source = Path(resume) if is_run(resume) else root / resume
    else:
        try:
            source, prefix = catalog.resolve(resume, root)
        except UserError as e:
            raise UserError(f"--resume {resume}: {e}") from None
    source = Path(source)
    source_name = source.resolve().name  # also when the folder is "." or ends in "/"
    if prefix is None and "run" in given and cfg.run != source_name:
        raise UserError(f"--run names a new run, but --resume {resume or source_name} continues run {source_name}; "
                        f"to go on in a new run, resume a checkpoint: --resume {source_name}/best or "
                        f"{source_name}/ckpt-N")
    saved, vocab, manifest = load_run_files(source)
    merged = _merge(source, saved, vocab, cfg, given)
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


def _merge(source, saved, vocab, cfg, given):
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
        merged.check(saved=True)
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
    model = model_config(source, saved, vocab)
    if model != merged.model_config(model.vocab_size):
        raise UserError(f"{where}: the model section ({describe_model(model)}) disagrees with the training section; "
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


MAX_RUN_NAME = 200  # bytes: a folder name may hold 255; a fork of a run adds "-from-STEP" to it


def check_run_name(name):
    """Refuse a --run name that could not be a folder, or would break the commands the
    tools print with it (a leading '-' reads as a flag, a control character as a
    terminal command)."""
    shown = repr(name if len(name) <= 40 else name[:36] + "...")
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--run {shown} must be a plain folder name, without '/'")
    if name.startswith("-") or any(unicodedata.category(c) == "Cc" for c in name):
        raise UserError(f"--run {shown} must not start with '-' nor hold control characters; "
                        f"use letters, digits, '.', '_' and '-'")
    if len(name.encode()) > MAX_RUN_NAME:
        raise UserError(f"--run {shown} is {len(name.encode())} bytes long; give a name of at most {MAX_RUN_NAME}")


def _new_run_dirs(cfg, name):
    """(run folder, log folder) of a new run called name, refusing to write into another run's files."""
    check_run_name(name)
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
