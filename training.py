"""The training loop: truncated backpropagation through time, one compiled step per batch.

    train(config, resume)            the whole job, called by rnn_train.py
      prepare_run                    new run or resumed run; refuses mismatches
      read the corpus                txt_utils.read_corpus
      build model, Adam, checkpoint  model.CharRNN, checkpoints.training_checkpoint
      loop over the sequencer        train_step; validate / sample / checkpoint on a schedule

The RNN state is carried from batch to batch in tf.Variables (the sequencer's
rows continue each other), and it is saved with the checkpoint, with the
optimizer, the dropout seed generators and the sequencer position, so that a
resumed run computes exactly what an uninterrupted one would have.
"""

import dataclasses
import math
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import checkpoints as ckpts
import precision
import txt_utils
from config import DEFAULT_DATA, FIXED_ON_RESUME, PER_PROCESS, SamplingConfig, TrainConfig, flag
from errors import UserError
from model import CharRNN
from sampling import Generator

VAL_ROW_CHARS = 1024     # validation rows: up to 64 rows of at least this many characters
SAMPLE_CHARS = 300


# ---------------------------------------------------------------- the run

def prepare_run(cfg, resume, explicit):
    """Return (run_dir, log_dir, effective config, source).

    resume: None for a new run, "" for the newest run, a run name or directory, or
    a checkpoint prefix (or a run's best/ folder), which starts a new run from it:
    `--run NAME`, or by default SOURCE-from-STEP.
    explicit: the config fields given on the command line, which may override
    a resumed run's saved configuration where that is safe.
    source: None for a new run, else (the run whose files and configuration are
    used, the checkpoint prefix to restore or None for its newest).
    """
    root = Path(cfg.checkpoint_dir)
    if resume is None:
        name = cfg.run or f"{cfg.cell}{cfg.layers}x{cfg.units}-{datetime.now():%Y%m%d-%H%M%S}"
        return *new_run_dirs(cfg, name), cfg, None
    prefix = None
    if resume == "":
        run_dir = ckpts.newest_run(root)
        if run_dir is None:
            raise UserError(f"--resume: no run with a checkpoint under {root}/; start one without --resume")
    elif ckpts.is_run(resume) or ckpts.is_run(root / resume):
        run_dir = Path(resume) if ckpts.is_run(resume) else root / resume
    else:
        try:
            run_dir, prefix = ckpts.resolve(resume, root)
        except UserError as e:
            raise UserError(f"--resume {resume}: {e}") from None
    run_name = Path(run_dir).resolve().name  # also when run_dir is "." or ends in "/"
    if prefix is None and "run" in explicit and cfg.run != run_name:
        raise UserError(f"--run names a new run, but --resume {resume or run_name} continues run {run_name}; "
                        f"to go on in a new run, resume a checkpoint: --resume {run_name}/best or {run_name}/ckpt-N")
    saved = ckpts.read_json(Path(run_dir) / ckpts.CONFIG)
    saved = saved.get("training") if isinstance(saved, dict) else None
    if not isinstance(saved, dict):
        raise UserError(f"{Path(run_dir) / ckpts.CONFIG} has no training section")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = TrainConfig(**{k: v for k, v in saved.items() if k in known and k not in PER_PROCESS})
    for name in explicit:
        new, old = getattr(cfg, name), getattr(merged, name)
        if name in FIXED_ON_RESUME and new != old:
            raise UserError(f"{flag(name)} {new} differs from run {run_dir.name}'s {old}; "
                            f"drop the flag to resume, or start a new run")
        if name == "data" and new != old and not cfg.allow_corpus_change:
            raise UserError(f"--data {' '.join(new)} differs from run {run_dir.name}'s {' '.join(old)}; "
                            f"pass --allow-corpus-change to train on new text")
    for name in explicit:
        setattr(merged, name, getattr(cfg, name))
    for name in PER_PROCESS:
        setattr(merged, name, getattr(cfg, name))
    if prefix is None:  # the run goes on in its own folders
        merged.run = run_name
        return Path(run_dir), Path(cfg.log_dir) / run_name, merged, (Path(run_dir), None)
    merged.run = cfg.run or f"{run_name}-from-{Path(prefix).name.rsplit('-', 1)[-1]}"
    return *new_run_dirs(merged, merged.run), merged, (Path(run_dir), prefix)


def new_run_dirs(cfg, name):
    """(run_dir, log_dir) of a new run called name, refusing to write into another run's files."""
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--run {name!r} must be a plain folder name, without '/'")
    run_dir, log_dir = Path(cfg.checkpoint_dir) / name, Path(cfg.log_dir) / name
    # A directory that holds checkpoints or logs belongs to another run; one left with
    # only its JSON files by a run that failed before training may be reused.
    for d in (run_dir, log_dir):
        if d.exists() and not d.is_dir():
            raise UserError(f"{d} is a file, not a run folder; choose another --run")
    taken = [d for d in (run_dir, log_dir)
             if d.exists() and any(p.name.startswith(("ckpt-", "checkpoint", "events.")) or p.is_dir()
                                   for p in d.iterdir())]
    if taken:
        raise UserError(f"{taken[0]} already exists; continue it with `--resume {name}` "
                        f"or choose another --run")
    return run_dir, log_dir


def check_writable(dirs):
    """Fail before any training if a directory cannot be written. dirs: {dir: flag to change}."""
    for d, flag_name in dirs.items():
        probe = Path(d) / ".write-test"
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to {d} ({e.strerror}); choose another {flag_name}") from None


def corpus_manifest(cfg, corpus):
    return {"data": cfg.data, "workdir": os.getcwd(), "validation": cfg.validation,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in corpus.files]}


def check_same_corpus(saved, current, allow, run_dir):
    """Refuse to resume on different text, naming the first file that differs."""
    if saved is None:
        if allow:
            return
        raise UserError(f"{Path(run_dir) / ckpts.CORPUS} is missing, so the text cannot be checked; "
                        f"pass --allow-corpus-change to resume anyway")
    if not isinstance(saved, dict) or not isinstance(saved.get("files"), list):
        raise UserError(f"{Path(run_dir) / ckpts.CORPUS} is damaged; restore it from a backup, "
                        f"or delete it and pass --allow-corpus-change")
    old = {f["path"]: f for f in saved["files"]}
    new = {f["path"]: f for f in current["files"]}
    for path in sorted(old.keys() | new.keys()):
        if old.get(path) != new.get(path):
            what = ("is new" if path not in old else "is gone" if path not in new else "has changed")
            if allow:
                print(f"warning: corpus file {path} {what} since run {run_dir.name} started", file=sys.stderr)
                continue
            raise UserError(f"corpus file {path} {what} since run {run_dir.name} started "
                            f"(see {run_dir / ckpts.CORPUS}); pass --allow-corpus-change to continue on it")


def read_corpus(cfg, vocab=None):
    if cfg.data == [DEFAULT_DATA]:
        txt_utils.ensure_shakespeare(str(Path(DEFAULT_DATA).parent))
    return txt_utils.read_corpus(cfg.data, vocab=vocab, max_vocab=cfg.max_vocab or None,
                                 validation=cfg.validation)


# ---------------------------------------------------------------- compiled steps

def make_train_step(model, optimizer, variables, states, clip_norm, loss_scale=None):
    """One compiled training step on a batch; the carried state lives in `states`.

    A step whose loss or gradient is not finite changes nothing: no weight, no
    optimizer slot, no state. It returns (loss, accuracy, finite).
    loss_scale: a precision.LossScale for fp16, else None.
    """
    @tf.function(reduce_retracing=True)
    def train_step(x, y):  # x, y: [B, T] int
        with tf.GradientTape() as tape:
            logits, new_states = model(x, [s.value() for s in states], training=True)  # [B, T, V]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            scaled = loss * loss_scale.scale if loss_scale else loss
        # Dense gradients: Keras's Adam squares an IndexedSlices gradient (an
        # embedding's) row by row before summing repeated ids, which is not Adam.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        if loss_scale:
            grads = [g / loss_scale.scale for g in grads]
        grads, norm = tf.clip_by_global_norm(grads, clip_norm)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)

        def apply():
            optimizer.apply(grads, variables)
            for s, new in zip(states, new_states):
                s.assign(new)
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        if loss_scale:
            loss_scale.update(finite)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        return loss, accuracy, finite

    return train_step


def make_validate(model, seqlen):
    """Return validate(codes) -> (loss in nats/char, accuracy) on held-out text.

    The text is cut into a few long rows, each read from a zero state with the
    state carried from chunk to chunk: the model is judged the way it generates,
    not on independent short windows that each start cold.
    """
    @tf.function(reduce_retracing=True)
    def eval_chunk(x, y, states):
        logits, states = model(x, states, training=False)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)  # [R, T]
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
        return tf.reduce_sum(ce), tf.reduce_sum(correct), states

    def validate(codes):
        n = len(codes) - 1
        rows = max(1, min(64, n // VAL_ROW_CHARS))
        row_len = n // rows // seqlen * seqlen
        if row_len == 0:
            return None
        x = codes[:rows * row_len].reshape(rows, row_len).astype(np.int32)     # [R, L]
        y = codes[1:rows * row_len + 1].reshape(rows, row_len).astype(np.int32)
        states = model.initial_states(rows)
        total_ce, total_correct = 0.0, 0.0
        for t in range(0, row_len, seqlen):
            ce, correct, states = eval_chunk(x[:, t:t + seqlen], y[:, t:t + seqlen], states)
            total_ce += float(ce)
            total_correct += float(correct)
        return total_ce / x.size, total_correct / x.size

    return validate


# ---------------------------------------------------------------- the job

class Interrupt:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the current
    step completes and a checkpoint is written before the process exits."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(cfg: TrainConfig, resume=None, explicit=()):
    """Train (or resume) a run. Returns the process exit code: 0, or 130/143 after a signal."""
    run_dir, log_dir, cfg, source = prepare_run(cfg, resume, explicit)
    new_dirs = [d for d in (run_dir, log_dir, Path(cfg.checkpoint_dir), Path(cfg.log_dir)) if not d.exists()]
    check_writable({cfg.checkpoint_dir: "--checkpoint-dir", cfg.log_dir: "--log-dir"})
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with ckpts.RunLock(run_dir):
            check_writable({run_dir: "--checkpoint-dir or --run", log_dir: "--log-dir or --run"})
            return _train(cfg, run_dir, log_dir, source)
    except (UserError, KeyboardInterrupt):
        # A run that fails before it writes anything leaves no folder to trip over later
        # (the run's own folders first, then the roots this call created, if left empty).
        for d in new_dirs:
            if d.is_dir() and all(p.name in (ckpts.LOCK, ckpts.CONFIG, ckpts.VOCAB, ckpts.CORPUS)
                                  for p in d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        raise


def _train(cfg, run_dir, log_dir, source):
    if source:
        source_dir, prefix = source
        _, vocab, saved_manifest = ckpts.load_run_files(source_dir)
        try:
            corpus = read_corpus(cfg, vocab=vocab)
        except UserError as e:  # relative globs read from another folder than the run's own
            started = saved_manifest.get("workdir") if isinstance(saved_manifest, dict) else None
            if (started and os.path.realpath(started) != os.path.realpath(os.getcwd())
                    and not all(os.path.isabs(os.path.expanduser(g)) for g in cfg.data)):
                raise UserError(f"{e} -- run {source_dir.name} was started in {started}: resume it from there") from None
            raise
        check_same_corpus(saved_manifest, corpus_manifest(cfg, corpus), cfg.allow_corpus_change, source_dir)
        prefix = prefix or ckpts.latest_checkpoint(run_dir)
        if prefix is None:
            raise UserError(f"{run_dir} holds no checkpoint to resume from; start a new run instead")
    else:
        corpus = read_corpus(cfg)
        vocab, prefix = corpus.vocab, None
    train_codes, valid_codes = corpus.train, corpus.valid
    nb_batches = txt_utils.batches_per_epoch(len(train_codes), cfg.batch_size, cfg.seqlen)
    if nb_batches == 0:
        raise UserError(f"one batch needs {cfg.batch_size * cfg.seqlen + 1:,} training characters "
                        f"(--batch-size {cfg.batch_size} x --seqlen {cfg.seqlen} + 1) but there are "
                        f"{len(train_codes):,}; lower --batch-size or --seqlen, or add text")
    total_steps = cfg.max_steps or cfg.epochs * nb_batches
    nb_epochs = math.ceil(total_steps / nb_batches)

    mconf = cfg.model_config(len(vocab))
    keras.utils.set_random_seed(cfg.seed)
    chosen = precision.for_this_machine(cfg.precision)
    if chosen.warning:
        print(chosen.warning, file=sys.stderr)
    model = CharRNN(mconf, implementation=cfg.implementation, precision=chosen.precision)
    model(tf.zeros([1, 1], tf.int32))  # build every variable before restoring
    named = model.named_variables()
    variables = list(named.values())
    optimizer = keras.optimizers.Adam(cfg.lr)
    optimizer.build(variables)
    states = [tf.Variable(s, trainable=False) for s in model.initial_states(cfg.batch_size)]
    progress = {name: tf.Variable(0, dtype=tf.int64) for name in ("step", "epoch", "batch", "nonfinite")}
    progress["best_val_loss"] = tf.Variable(ckpts.NOT_VALIDATED, dtype=tf.float64)
    checkpoint = ckpts.training_checkpoint(model, optimizer, progress, states)
    manager = tf.train.CheckpointManager(checkpoint, str(run_dir), max_to_keep=cfg.keep)
    best_manager = tf.train.CheckpointManager(checkpoint, str(run_dir / ckpts.BEST), max_to_keep=1)

    config_json = {"model": mconf.to_json(), "training": dataclasses.asdict(cfg)}
    if source:
        ckpts.restore(checkpoint, prefix, what="run")
        optimizer.learning_rate.assign(cfg.lr)  # a new --lr applies from here on
        forked = source_dir != run_dir  # a new run from another run's checkpoint
        if int(progress["step"]) >= total_steps and forked:
            raise UserError(f"--resume {prefix} is at step {int(progress['step'])}, already past the "
                            f"{total_steps} steps of the run; raise --max-steps or --epochs")
        what, origin = ("new run", prefix) if forked else ("resuming", Path(prefix).name)
        print(f"{what} {run_dir} from {origin} (step {int(progress['step'])}), {chosen.describe()}", file=sys.stderr)
        if int(progress["step"]) >= total_steps:
            print(f"run {run_dir.name} is already at step {int(progress['step'])} of {total_steps}: nothing to "
                  f"train; raise --max-steps or --epochs to go on", file=sys.stderr)
            return 0
    else:
        print(f"new run {run_dir}: {len(train_codes):,} training and {len(valid_codes):,} validation chars "
              f"({corpus.held_out()}) from {len(corpus.files)} file{'s' * (len(corpus.files) > 1)}, "
              f"vocabulary {len(vocab)}, {chosen.describe()}", file=sys.stderr)
    ckpts.save_run_files(run_dir, config_json, vocab, corpus_manifest(cfg, corpus))

    loss_scale = precision.LossScale() if chosen.precision == "fp16" else None
    train_step = make_train_step(model, optimizer, variables, states, cfg.clip_norm, loss_scale)
    validate = make_validate(model, cfg.seqlen)
    generator = Generator(model, vocab, SamplingConfig(temperature=0.8, seed=cfg.seed))
    train_writer = tf.summary.create_file_writer(str(log_dir / "train"))
    valid_writer = tf.summary.create_file_writer(str(log_dir / "validation"))
    with train_writer.as_default(step=int(progress["step"])):
        tf.summary.text("config", config_markdown(config_json, corpus))

    def save(manager_):
        """Write a checkpoint unless some value is not finite: no checkpoint ever holds NaN or Inf.

        During a run of skipped (non-finite) steps nothing is written either, so the
        newest checkpoint stays the last one known to train well."""
        if nonfinite_in_a_row:
            return None
        for name, v in list(named.items()) + [(f"state {i}", s) for i, s in enumerate(states)]:
            if not np.all(np.isfinite(v.numpy())):
                tqdm.write(f"step {int(progress['step'])}: {name} is not finite; checkpoint not written, "
                           f"the last good one is kept")
                return None
        return manager_.save(checkpoint_number=int(progress["step"]))

    def run_validation(step):
        result = validate(valid_codes) if len(valid_codes) else None
        if result is None:
            return
        loss, accuracy = result
        with valid_writer.as_default(step=step):
            write_metrics(loss, accuracy)
        best = loss < float(progress["best_val_loss"])
        if best:
            progress["best_val_loss"].assign(loss)
            save(best_manager)
        tqdm.write(f"step {step:>7}  validation: loss {loss:.4f} nats, {loss / math.log(2):.4f} bits/char, "
                   f"accuracy {accuracy:.2%}{'  (best)' if best else ''}")

    def show_sample(step):
        ids = next(generator.stream(length=SAMPLE_CHARS))[0]
        text = vocab.decode(ids)
        tqdm.write(f"--- sample at step {step} ---\n{text}\n---")
        with train_writer.as_default(step=step):
            tf.summary.text("sample", "```\n" + text + "\n```")

    step = int(progress["step"])
    epoch, batch = divmod(step, nb_batches)
    flops = 3 * mconf.flops_per_char()
    chars_per_step = cfg.batch_size * cfg.seqlen
    nonfinite_in_a_row = 0
    window = {"loss": 0.0, "accuracy": 0.0, "n": 0, "t": time.perf_counter(), "chars": 0}
    started, start_step = time.perf_counter(), step
    bar = None
    exit_code = 0
    sequencer = txt_utils.rnn_minibatch_sequencer(train_codes, cfg.batch_size, cfg.seqlen, nb_epochs,
                                                  start_epoch=epoch, start_batch=batch)
    with Interrupt() as interrupt:
        for x, y, epoch in sequencer:
            if step >= total_steps or interrupt.signum is not None:
                break
            batch = step % nb_batches
            if bar is None or batch == 0:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=nb_batches, initial=batch, desc=f"epoch {epoch + 1}/{nb_epochs}",
                           unit="batch", file=sys.stderr, dynamic_ncols=True, disable=None, leave=False)
            loss, accuracy, finite = train_step(x.astype(np.int32), y.astype(np.int32))
            step += 1
            progress["step"].assign(step)
            progress["epoch"].assign(step // nb_batches)
            progress["batch"].assign(step % nb_batches)
            if not bool(finite):
                nonfinite_in_a_row += 1
                progress["nonfinite"].assign_add(1)
                tqdm.write(f"step {step}: non-finite loss or gradient, step skipped "
                           f"({nonfinite_in_a_row} in a row)")
                if nonfinite_in_a_row >= cfg.max_nonfinite:
                    where = (f"the last good checkpoint is {manager.latest_checkpoint}; lower --lr or "
                             f"--clip-norm and --resume" if manager.latest_checkpoint else
                             f"no checkpoint was written; start a new run (another --run) with a lower "
                             f"--lr or --clip-norm")
                    raise UserError(f"training diverged: {nonfinite_in_a_row} non-finite steps in a row at "
                                    f"step {step}; {where}")
            else:
                nonfinite_in_a_row = 0
                window["loss"] += float(loss)
                window["accuracy"] += float(accuracy)
                window["n"] += 1
            window["chars"] += chars_per_step
            bar.update(1)
            if step % cfg.log_every == 0 and window["n"]:
                now = time.perf_counter()
                speed = window["chars"] / (now - window["t"])
                left = (total_steps - step) * chars_per_step / speed
                mean_loss = window["loss"] / window["n"]
                bar.set_postfix_str(f"loss {mean_loss:.3f}, {speed:,.0f} chars/s, run left {format_duration(left)}",
                                    refresh=False)
                with train_writer.as_default(step=step):
                    write_metrics(mean_loss, window["accuracy"] / window["n"])
                    tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
                    tf.summary.scalar("chars_per_s", speed)
                    tf.summary.scalar("flop_rate_gflops", speed * flops / 1e9)
                window.update(loss=0.0, accuracy=0.0, n=0, t=now, chars=0)
            if step % cfg.val_every == 0:
                run_validation(step)
            if step % cfg.sample_every == 0:
                show_sample(step)
            if step % cfg.checkpoint_every == 0:
                save(manager)
        if bar is not None:
            bar.close()
        if interrupt.signum is not None:
            exit_code = 128 + interrupt.signum
            print(f"\ninterrupted by signal {interrupt.signum} at step {step}", file=sys.stderr)
        elif step % cfg.val_every and step > start_step:
            run_validation(step)
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            path = save(manager)
            if path:
                print(f"saved {path}", file=sys.stderr)
    train_writer.flush()
    valid_writer.flush()
    if step > start_step and exit_code == 0:
        elapsed = time.perf_counter() - started
        print(f"done: step {step} of {total_steps} in {format_duration(elapsed)}; "
              f"generate text with `python3 rnn_play.py {run_dir.name}`", file=sys.stderr)
    return exit_code


def write_metrics(loss, accuracy):
    tf.summary.scalar("loss", loss)
    tf.summary.scalar("bits_per_char", loss / math.log(2))
    tf.summary.scalar("accuracy", accuracy)


def config_markdown(config_json, corpus):
    rows = [f"| {section}.{k} | {v} |" for section, values in config_json.items() for k, v in values.items()]
    rows.append(f"| corpus | {len(corpus.files)} files, {len(corpus.codes):,} chars |")
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)
