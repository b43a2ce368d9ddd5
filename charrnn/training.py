"""The training loop: truncated backpropagation through time, one compiled step per batch.

    train(config, resume, given)   the whole job, called by rnn_train.py
      run.open_run                 a new, resumed or forked run: folders and saved files
      Trainer                      model, Adam, carried state, checkpoint: what a step changes
      the loop in _train           train_step; log / validate / sample / save on a schedule

The RNN state is carried from batch to batch in tf.Variables (the sequencer's
rows continue each other), and it is saved with the checkpoint, with the
optimizer, the dropout seed generators and the sequencer position, so that a
resumed run computes exactly what an uninterrupted one would have.
"""

import math
import signal
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalars

from charrnn import checkpoints, distribute, precision, runs, schedule
from charrnn.config import SamplingConfig, TrainConfig
from charrnn.console import Console, format_duration
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.sampling import Generator
from charrnn.text import require_batches, rnn_minibatch_sequencer

VAL_ROWS, VAL_ROW_CHARS = 64, 1024  # validation: up to 64 rows, each of at least 1,024 chars when the text allows
SAMPLE_CHARS = 300
CLOCK = ("seconds", "planned_steps", "planned_for")  # the progress counters of the run's time and plan


def train(cfg: TrainConfig, resume=None, given=(), strategy=None, started=None):
    """Train (or resume) a run. Returns the process exit code: 0, or 130/143 after a signal.

    strategy: None for one device, or the tf.distribute strategy of distribute.make_strategy.
    started: when the command started (schedule.now()), for --max-time; default now."""
    run = distribute.prepare_run(runs.open_run(cfg, resume, given), strategy)
    with run.claimed(), distribute.peers_watched(strategy):
        return _train(run, strategy, schedule.now() if started is None else started)


def _train(run, strategy, started):
    cfg = run.config
    corpus = run.read_corpus()
    nb_batches = require_batches(len(corpus.train), cfg.batch_size, cfg.seqlen)
    with distribute.scope(strategy):
        trainer = Trainer(cfg.model_config(len(corpus.vocab)), cfg, run, corpus.vocab, nb_batches, started)
    if not announce(run, corpus, trainer):
        return 0
    distribute.note_replicas(run)
    chief = distribute.is_chief(strategy)  # validation and samples: once, from the chief
    run.save_files(trainer.model.config, corpus.vocab, corpus.files)
    logs = Logs(run, corpus, trainer.step)
    console = Console(trainer.schedule_steps, trainer.step, cfg.batch_size * cfg.seqlen)
    generator = Generator(trainer.model, corpus.vocab, SamplingConfig(temperature=0.8, seed=cfg.seed))
    limit = trainer.step_limit
    epochs = math.ceil(limit / nb_batches) if limit else sys.maxsize  # no limit: until the deadline
    sequencer = rnn_minibatch_sequencer(corpus.train, cfg.batch_size, cfg.seqlen, epochs,
                                                  *divmod(trainer.step, nb_batches))
    start_step, budget = trainer.step, trainer.budget
    with Interrupt() as interrupt, console:
        for x, y, _ in sequencer:
            if trainer.finished() or interrupt.signum is not None or budget.over():
                break
            step = trainer.train_step(x, y)
            budget.stepped(step, start_step)
            console.advance(step, trainer.last_loss)
            if step % cfg.log_every == 0 and console.window.steps:
                logs.train(step, console.log_window(), float(trainer.optimizer.learning_rate.numpy()),
                           trainer.flops_per_char)
            if step % cfg.val_every == 0 and chief:
                validate(trainer, corpus, logs, console, interrupt)
            if budget.ready_to_plan():
                plan(trainer, corpus, logs, console)
            if cfg.max_time and step == trainer.schedule_steps and not trainer.finished():
                console.set_total(None)
                Console.write(f"step {step}: the planned steps are done with time left; the run goes on at "
                              f"the final learning rate until --max-time {cfg.max_time} is up")
            if step % cfg.sample_every == 0 and chief:
                show_sample(generator, corpus.vocab, logs, console, step)
            if step % cfg.checkpoint_every == 0:
                trainer.save(trainer.latest, console)
        if budget.over() and not trainer.finished():
            Console.write(f"--max-time {cfg.max_time} reached at step {trainer.step}")
        if interrupt.signum is None and trainer.step % cfg.val_every and trainer.step > start_step and chief:
            validate(trainer, corpus, logs, console)
        if not (trainer.latest.latest or "").endswith(f"-{trainer.step}"):
            trainer.save(trainer.latest, console)
    logs.flush()
    if interrupt.signum is not None:
        console.interrupted(interrupt.signum, trainer, run)
        return 128 + interrupt.signum
    if trainer.step > start_step:
        console.summary(trainer, run, trainer.step_limit or trainer.step)
    return 0


def announce(run, corpus, trainer):
    """Restore a resumed run and say what starts; False when there is nothing to train."""
    if run.source is None:
        files = len(corpus.files)
        print(f"new run {run.dir}: {len(corpus.train):,} training and {len(corpus.valid):,} validation chars "
              f"({corpus.held_out()}) from {files} file{'s' * (files > 1)}, vocabulary {len(corpus.vocab)}, "
              f"{trainer.choice.describe()}", file=sys.stderr)
        return True
    trainer.restore(run.prefix, run.vocab_file)
    step, total_steps = trainer.step, trainer.step_limit
    longer = "--max-steps" if run.config.max_time else "--max-steps or --epochs"
    if trainer.finished() and run.forked:
        raise UserError(f"--resume {run.prefix} is at step {step}, already past the {total_steps} steps of "
                        f"the run; raise {longer}")
    what, origin = ("new run", run.prefix) if run.forked else ("resuming", Path(run.prefix).name)
    print(f"{what} {run.dir} from {origin} (step {step}), {trainer.choice.describe()}", file=sys.stderr)
    if trainer.finished():
        print(f"run {run.name} is already at step {step} of {total_steps}: nothing to train; raise "
              f"{longer} to go on", file=sys.stderr)
        return False
    if trainer.budget.over():
        print(f"run {run.name} has spent its --max-time {run.config.max_time} "
              f"({format_duration(trainer.budget.spent())}): nothing to train; raise --max-time to go on",
              file=sys.stderr)
        return False
    return True


def plan(trainer, corpus, logs, console):
    """Fix the steps a --max-time run's schedule spans, after its calibration window. The
    validations to come are timed first: the first one of a process also traces, so it
    is timed again, silently (the score is the same)."""
    budget = trainer.budget
    while budget.validation_seconds is None and len(corpus.valid):
        if budget.validations:
            started = schedule.now()
            trainer.validate(corpus.valid, lambda: False)
            budget.validated(schedule.now() - started)
        else:
            validate(trainer, corpus, logs, console)
    total, per_step = trainer.plan()
    console.set_total(total)
    Console.write(f"--max-time {trainer.cfg.max_time}: {total:,} steps planned ({per_step:.3f} s a step"
                  + (f", {budget.validation_seconds:.1f} s a validation" if budget.validation_seconds else "")
                  + "); the learning-rate schedule spans them")


# ---------------------------------------------------------------- what a step changes

class Trainer:
    """The model and everything a training step changes, in one checkpoint.

    Holds the model, Adam, the RNN state carried between batches, the progress
    counters, and the run's checkpoint managers. A non-finite step changes
    nothing and is counted; after max_nonfinite in a row the run stops.
    """

    def __init__(self, model_config, cfg, run, vocab, nb_batches, started):
        self.cfg, self.nb_batches, self.started = cfg, nb_batches, started
        keras.utils.set_random_seed(cfg.seed)
        self.choice = precision.for_this_machine(cfg.precision)  # the matmuls' dtype, and why
        if self.choice.warning:
            print(self.choice.warning, file=sys.stderr)
        self.model = CharRNN(model_config, implementation=cfg.implementation, precision=self.choice.precision)
        self.named = self.model.named_variables()  # every variable is built: it can be restored
        self.optimizer = make_optimizer(cfg, self.named)
        self.states = [tf.Variable(s, trainable=False) for s in self.model.initial_states(cfg.batch_size)]
        self.progress = {name: tf.Variable(0, dtype=tf.int64)
                         for name in ("step", "epoch", "batch", "nonfinite", "planned_steps")}
        self.progress["best_val_loss"] = tf.Variable(checkpoints.NOT_VALIDATED, dtype=tf.float64)
        # The run's clock: seconds spent over all its processes, and the --max-time a plan was made for.
        self.progress["seconds"] = tf.Variable(0.0, dtype=tf.float64)
        self.progress["planned_for"] = tf.Variable(0.0, dtype=tf.float64)
        self.vocab_fingerprint = vocab.fingerprint()
        self.checkpoint = checkpoints.training_checkpoint(self.model, self.optimizer, self.progress, self.states,
                                                          self.vocab_fingerprint)
        size = checkpoints.size_of([*self.named.values(), *self.optimizer.variables, *self.states])
        self.latest, self.best = run.managers(self.checkpoint, size)
        # Built under strategy.scope() (training._train), the step runs on every replica.
        variables = list(self.named.values())
        if tf.distribute.has_strategy():
            if self.choice.precision == "fp16":
                raise UserError("--precision fp16 with --distribute is not supported (its loss scaling runs on "
                                "one device); use --precision bf16 or fp32")
            self.compiled_step = distribute.make_distributed_train_step(self.model, self.optimizer, variables,
                                                                        self.states, cfg.clip_norm)
        else:
            loss_scale = precision.LossScale() if self.choice.precision == "fp16" else None
            self.compiled_step = make_train_step(self.model, self.optimizer, variables, self.states, cfg.clip_norm,
                                                 loss_scale)
        self.validate = make_validate(self.model, cfg.seqlen, cfg.val_chars)
        self.flops_per_char = 3 * model_config.flops_per_char()
        self.nonfinite_in_a_row = 0
        self.last_loss = None
        self.budget = schedule.Budget(cfg.max_seconds, started=started)

    @property
    def step(self):
        return int(self.progress["step"].numpy())  # .numpy(): also a mirrored variable (distribute.py)

    @property
    def best_val_loss(self):
        best = float(self.progress["best_val_loss"].numpy())
        return None if best >= checkpoints.NOT_VALIDATED else best

    @property
    def step_limit(self):
        """The step the run stops at: --max-steps, else the steps of --epochs; None for a
        --max-time run without --max-steps, which stops at its deadline."""
        cfg = self.cfg
        return cfg.max_steps or (None if cfg.max_time else cfg.epochs * self.nb_batches)

    @property
    def schedule_steps(self):
        """The steps the learning-rate schedule spans: the step limit, or a --max-time run's
        plan (within the limit); None for a --max-time run before its plan."""
        planned, limit = self.budget.planned, self.step_limit
        return min(planned, limit or planned) if planned else limit

    def finished(self):
        return self.step_limit is not None and self.step >= self.step_limit

    def restore(self, prefix, vocab_file):
        vocabulary = (self.vocab_fingerprint, vocab_file)
        try:
            checkpoints.restore(self.checkpoint, prefix, what="run", vocabulary=vocabulary)
        except UserError:
            # A checkpoint from before the run's clock was saved restores without it (zeros).
            older = {name: v for name, v in self.progress.items() if name not in CLOCK}
            checkpoints.restore(checkpoints.training_checkpoint(self.model, self.optimizer, older, self.states,
                                                                self.vocab_fingerprint),
                                prefix, what="run", vocabulary=vocabulary)
        # A plan holds for the --max-time it was made for; another --max-time plans again.
        same = float(self.progress["planned_for"].numpy()) == (self.cfg.max_seconds or 0.0)
        self.budget = schedule.Budget(self.cfg.max_seconds, float(self.progress["seconds"].numpy()),
                                      int(self.progress["planned_steps"].numpy()) if same else 0, self.started)

    def plan(self):
        """Fix the steps a --max-time run's schedule spans from the time left
        (schedule.Budget.plan), and save them with the run. Returns (steps, seconds per step)."""
        planned, per_step = self.budget.plan(self.step, self.cfg.val_every)
        self.progress["planned_steps"].assign(planned)
        self.progress["planned_for"].assign(self.cfg.max_seconds)
        return self.schedule_steps, per_step

    def train_step(self, x, y):
        """One step on batch (x, y) [B, T], at the schedule's learning rate; returns the new step number."""
        self.optimizer.learning_rate.assign(schedule.learning_rate(self.cfg, self.step + 1, self.schedule_steps))
        loss, accuracy, finite = self.compiled_step(x.astype(np.int32), y.astype(np.int32))
        step = self.step + 1
        self.progress["step"].assign(step)
        self.progress["epoch"].assign(step // self.nb_batches)
        self.progress["batch"].assign(step % self.nb_batches)
        if bool(finite):
            self.nonfinite_in_a_row = 0
            self.last_loss = (float(loss), float(accuracy))
        else:
            self.skipped(step)
        return step

    def skipped(self, step):
        """Count a non-finite step; stop the run after too many in a row."""
        self.nonfinite_in_a_row += 1
        self.last_loss = None
        self.progress["nonfinite"].assign_add(1)
        Console.write(f"step {step}: non-finite loss or gradient, step skipped ({self.nonfinite_in_a_row} in a row)")
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            where = (f"the last good checkpoint is {self.latest.latest}; lower --lr or --clip-norm and --resume"
                     if self.latest.latest else
                     "no checkpoint was written; start a new run (another --run) with a lower --lr or --clip-norm")
            raise UserError(f"training diverged: {self.nonfinite_in_a_row} non-finite steps in a row at "
                            f"step {step}; {where}")

    def save(self, manager, console=None):
        """Write a checkpoint unless some value is not finite: no checkpoint ever holds NaN or Inf.

        During a run of skipped (non-finite) steps nothing is written either, so the
        newest checkpoint stays the last one known to train well."""
        if self.nonfinite_in_a_row:
            return None
        self.progress["seconds"].assign(self.budget.spent())
        for name, v in list(self.named.items()) + [(f"state {i}", s) for i, s in enumerate(self.states)]:
            if not np.all(np.isfinite(v.numpy())):
                Console.write(f"step {self.step}: {name} is not finite; checkpoint not written, "
                              f"the last good one is kept")
                return None
        return manager.save(self.step)


def validate(trainer, corpus, logs, console, interrupt=None):
    """Score the held-out text, log it, and keep the best checkpoint. A signal
    (interrupt) stops it between chunks: nothing is logged then."""
    stop = (lambda: interrupt.signum is not None) if interrupt else (lambda: False)
    started = schedule.now()
    result = trainer.validate(corpus.valid, stop) if len(corpus.valid) else None
    if result is None:
        return
    trainer.budget.validated(schedule.now() - started)
    loss, accuracy = result
    step = trainer.step
    logs.validation(step, loss, accuracy)
    best = trainer.best_val_loss is None or loss < trainer.best_val_loss
    if best:
        trainer.progress["best_val_loss"].assign(loss)
        trainer.save(trainer.best)
    console.validated(step, loss, accuracy, best)


def show_sample(generator, vocab, logs, console, step):
    """Print and log a sample that starts from a zero state; its seed follows the step."""
    ids = next(generator.stream(length=SAMPLE_CHARS, seed=generator.config.seed + step))[0]
    text = vocab.decode(ids)
    Console.write(f"--- sample at step {step} ---\n{text}\n---")
    logs.sample(step, text)


def make_optimizer(cfg, named):
    """Adam, or with --weight-decay AdamW: each step also shrinks the weight matrices by
    lr x weight_decay, apart from the gradient (decoupled). Biases and a learned
    embedding are not decayed: pulling them toward zero only biases the model.
    named: the model's variables by name (model.named_variables())."""
    if cfg.weight_decay:
        optimizer = keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_list=[v for name, v in named.items() if not decayed(name)])
    else:
        optimizer = keras.optimizers.Adam(cfg.lr)
    optimizer.build(list(named.values()))
    return optimizer


def decayed(name):
    """Whether --weight-decay acts on the variable called name (model.named_variables())."""
    return name.endswith("kernel")


# ---------------------------------------------------------------- compiled steps

def make_train_step(model, optimizer, variables, states, clip_norm, loss_scale=None):
    """One compiled training step on a batch; the carried state lives in `states`.

    A step whose loss, gradient or updated weights are not finite changes nothing:
    no weight, no optimizer slot, no state. It returns (loss, accuracy, finite).
    loss_scale: a precision.LossScale for fp16, else None.
    """
    if not optimizer.built:
        optimizer.build(variables)
    kept = list(variables) + list(optimizer.variables)  # what a step may change, states aside

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
            before = [tf.identity(v) for v in kept]  # weights, Adam's slots and counters
            optimizer.apply(grads, variables)
            # A finite gradient can still overflow a weight (a huge learning rate): undo it all then.
            applied = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])

            def keep():
                for s, new in zip(states, new_states):
                    s.assign(new)
                return tf.constant(True)

            def undo():
                for v, old in zip(kept, before):
                    v.assign(old)
                return tf.constant(False)

            return tf.cond(applied, keep, undo)

        finite = tf.cond(finite, apply, lambda: tf.constant(False))
        if loss_scale:
            loss_scale.update(finite)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        return loss, accuracy, finite

    return train_step


def make_validate(model, seqlen, max_chars=0):
    """Return validate(codes, stop) -> (loss in nats/char, accuracy) on held-out text,
    or None when the text is too short or stop() turned true between two chunks.

    The text is cut into a few long rows, each read from a zero state with the
    state carried from chunk to chunk: the model is judged the way it generates,
    not on independent short windows that each start cold. Only its first
    max_chars characters are read (0: all), so a validation costs the same on
    any corpus. Every character read but the first is predicted and scored
    once: the rows are padded to whole chunks at the end, and the padding is
    not scored.
    """
    @tf.function(reduce_retracing=True)
    def eval_chunk(x, y, scored, states):
        logits, states = model(x, states, training=False)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)  # [R, T]
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
        return tf.reduce_sum(ce * scored), tf.reduce_sum(correct * scored), states

    def validate(codes, stop=lambda: False):
        n = min(len(codes) - 1, max_chars or len(codes))  # predicted characters
        if n < 1:
            return None
        rows = max(1, min(VAL_ROWS, n // VAL_ROW_CHARS))
        row_len = -(-n // (rows * seqlen)) * seqlen  # whole chunks, enough for the text
        first = np.arange(rows)[:, None] * row_len + np.arange(seqlen)  # [R, T]: the first chunk's positions
        states = model.initial_states(rows)
        total_ce, total_correct = 0.0, 0.0
        for t in range(0, row_len, seqlen):
            if stop():
                return None
            at = first + t  # one chunk at a time: no copy of the whole text
            scored = (at < n).astype(np.float32)  # the padding past the text is not scored
            at = np.minimum(at, n - 1)
            ce, correct, states = eval_chunk(codes[at].astype(np.int32), codes[at + 1].astype(np.int32),
                                             scored, states)
            total_ce += float(ce)
            total_correct += float(correct)
        return total_ce / n, total_correct / n

    return validate


# ---------------------------------------------------------------- logs and signals

# TensorBoard shows a card per tag, grouped by the part before the '/', groups in
# alphabetical order: the numbers put the loss first and the speed after the learning curves.
LOSS, BITS, ACCURACY = "1_loss/loss", "1_loss/loss_in_bits_per_char", "2_accuracy/accuracy"
CHARS_PER_S, GFLOPS, LEARNING_RATE = "3_speed/chars_per_s", "3_speed/flop_rate_gflops", "4_optimizer/learning_rate"
CHARTS = {  # the Custom Scalars tab, in this order: {category: [(chart title, tag)]}
    "learning": [("loss in nats, training and validation", LOSS), ("bits per character", BITS),
                 ("accuracy: next character right", ACCURACY)],
    "speed": [("characters per second", CHARS_PER_S), ("GFLOP/s of the training step", GFLOPS)],
    "optimizer": [("learning rate", LEARNING_RATE)],
}


class Logs:
    """TensorBoard summaries: train/ and validation/ side by side, so their curves overlay."""

    def __init__(self, run, corpus, step):
        train_dir, valid_dir = run.log_dirs()
        self.train_writer = tf.summary.create_file_writer(str(train_dir))
        self.valid_writer = tf.summary.create_file_writer(str(valid_dir))
        with self.train_writer.as_default(step=step):
            tf.summary.text("config", config_markdown(run, corpus))
            write_layout()

    def train(self, step, window, learning_rate, flops_per_char):
        with self.train_writer.as_default(step=step):
            write_metrics(window.loss, window.accuracy)
            tf.summary.scalar(LEARNING_RATE, learning_rate)
            tf.summary.scalar(CHARS_PER_S, window.chars_per_s)
            tf.summary.scalar(GFLOPS, window.chars_per_s * flops_per_char / 1e9)

    def validation(self, step, loss, accuracy):
        with self.valid_writer.as_default(step=step):
            write_metrics(loss, accuracy)

    def sample(self, step, text):
        with self.train_writer.as_default(step=step):
            tf.summary.text("sample", "```\n" + text + "\n```")

    def flush(self):
        self.train_writer.flush()
        self.valid_writer.flush()


def write_metrics(loss, accuracy):
    tf.summary.scalar(LOSS, loss)
    tf.summary.scalar(BITS, loss / math.log(2))
    tf.summary.scalar(ACCURACY, accuracy)


def write_layout():
    """The Custom Scalars tab's charts (TensorBoard merges the same layout from every run)."""
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=[f"^{tag}$"]))
            for chart, tag in charts])
        for title, charts in CHARTS.items()])
    tf.summary.write(custom_scalars.CONFIG_SUMMARY_TAG, tf.constant(layout.SerializeToString()),
                     metadata=custom_scalars.create_summary_metadata())


def config_markdown(run, corpus):
    cfg = run.config
    rows = [f"| {k} | {v} |" for k, v in vars(cfg).items()]
    rows.append(f"| vocabulary | {len(corpus.vocab)} symbols |")
    rows.append(f"| corpus | {len(corpus.files)} files, {len(corpus.codes):,} chars |")
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)


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

