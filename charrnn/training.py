"""The training loop: truncated backpropagation through time, one compiled step per batch.

    train(config, resume, given)   the whole job, called by rnn_train.py
      runs.open_run                a new, resumed or forked run: folders and saved files
      Trainer (trainer.py)         model, Adam, carried state, checkpoint: what a step changes
      _train                       the loop: the step, then the pieces, each on its own schedule

The pieces run after every step, in order, each owning its state and schedule:
Divergence, Log, Validation, plateau.KeepBest (--patience), Sample, Checkpoint and
budget.TimeLimit (--max-time). A piece is
a class with after_step(loop) and at_end(loop) (see Piece); to add one, write it
and put it in the list in _train. Any piece may end the run: loop.stop = True.
"""

import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from charrnn import budget, distribute, runs
from charrnn.budget import TimeLimit
from charrnn.config import SamplingConfig, TrainConfig, warmup_warning
from charrnn.console import Console
from charrnn.errors import UserError
from charrnn.logs import Logs
from charrnn.plateau import KeepBest
from charrnn.sampling import Generator
from charrnn.text import require_batches, rnn_minibatch_sequencer
from charrnn.trainer import Trainer

SAMPLE_CHARS = 300
FIRST_SAMPLE_SECONDS, SAMPLE_SECONDS = 60.0, 180.0  # a --max-time run's samples by the clock


def train(cfg: TrainConfig, resume=None, given=(), strategy=None, started=None):
    """Train (or resume) a run. Returns the process exit code: 0, or 130/143 after a signal.

    strategy: None for one device, or the tf.distribute strategy of distribute.make_strategy.
    started: when the command started (budget.now()), for --max-time; default now."""
    run = distribute.prepare_run(runs.open_run(cfg, resume, given), strategy)
    with run.claimed(), distribute.peers_watched(strategy):
        return _train(run, strategy, budget.now() if started is None else started)


@dataclass
class Loop:
    """What the pieces share: the run's objects, the step just done, and whether to stop."""

    trainer: Trainer
    corpus: object
    logs: Logs
    console: Console
    chief: bool  # validation and samples: once, from the chief
    start_step: int
    validation: "Validation"
    interrupt: "Interrupt" = None
    step: int = 0
    stop: bool = False

    @property
    def finished(self):
        return self.trainer.finished(self.step)


def _train(run, strategy, started):
    cfg = run.config
    corpus = run.read_corpus()
    nb_batches = require_batches(len(corpus.train), cfg.batch_size, cfg.seqlen)
    with distribute.scope(strategy):
        clock, keep = TimeLimit(cfg, started), KeepBest(cfg)
        trainer = Trainer(cfg.model_config(len(corpus.vocab)), cfg, nb_batches, clock, keep)
    trainer.attach(run, corpus.vocab)
    if run.source is not None:
        trainer.restore(run.prefix, run.vocab_file)
    if not announce(run, corpus, trainer) or clock.nothing_left(run):
        return 0
    if not cfg.max_steps and not cfg.max_time:  # --epochs: its steps are known now (--max-steps: rnn_train.py)
        warning = warmup_warning(cfg, trainer.step_limit, f"--epochs {cfg.epochs}")
        if warning:
            print(warning, file=sys.stderr)
    distribute.note_replicas(run)
    run.save_files(trainer.model.config, corpus.vocab, corpus.files)
    start = trainer.step
    console = Console(trainer.schedule_steps, start, cfg.batch_size * cfg.seqlen)
    divergence = Divergence(len(corpus.vocab))
    validation = Validation(cfg.val_every, divergence)
    loop = Loop(trainer, corpus, Logs(run, corpus, start), console, distribute.is_chief(strategy), start,
                validation, step=start)
    generator = Generator(trainer.model, corpus.vocab, SamplingConfig(temperature=0.8, seed=cfg.seed))
    sample = Sample(cfg.sample_every, generator, clock if cfg.max_time else None)
    pieces = [divergence, Log(cfg.log_every), validation, keep, sample, Checkpoint(cfg.checkpoint_every), clock]
    limit = trainer.step_limit
    epochs = math.ceil(limit / nb_batches) if limit else sys.maxsize  # no limit: until the deadline
    batches = rnn_minibatch_sequencer(corpus.train, cfg.batch_size, cfg.seqlen, epochs, *divmod(start, nb_batches))
    with Interrupt() as loop.interrupt, console:
        for x, y, _ in batches:
            trainer.train_step(x, y)
            loop.step += 1
            for piece in pieces:
                piece.after_step(loop)
            if loop.stop or loop.finished or loop.interrupt.signum is not None:
                break
        for piece in pieces:
            piece.at_end(loop)
    loop.logs.flush()
    if loop.interrupt.signum is not None:
        console.interrupted(loop.interrupt.signum, trainer, run)
        return 128 + loop.interrupt.signum
    if loop.step > start:
        console.summary(trainer, run, trainer.step_limit or loop.step)
    return 0


def announce(run, corpus, trainer):
    """Say what starts: a new run, or the resumed one (restored already); False when
    its steps are done."""
    if run.source is None:
        files = len(corpus.files)
        print(f"new run {run.dir}: {len(corpus.train):,} training and {len(corpus.valid):,} validation chars "
              f"({corpus.held_out()}) from {files} file{'s' * (files > 1)}, vocabulary {len(corpus.vocab)}, "
              f"{trainer.choice.describe()}", file=sys.stderr)
        return True
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
    return True


# ---------------------------------------------------------------- the pieces

class Piece:
    """What the loop calls after every step, and once when it ends."""

    def after_step(self, loop):
        pass

    def at_end(self, loop):
        pass


class Log(Piece):
    """The progress bar every step; every `every` steps the mean loss, the speed and the
    learning rate, on the console and in TensorBoard (the values read back then only)."""

    def __init__(self, every):
        self.every = every

    def after_step(self, loop):
        loop.console.advance(loop.step)
        window = loop.trainer.read_window() if loop.step % self.every == 0 else None
        if window:
            trainer = loop.trainer
            loop.logs.train(loop.step, loop.console.log_window(*window),
                            float(trainer.optimizer.learning_rate.numpy()), trainer.flops_per_char)


class Divergence(Piece):
    """Ends a run whose loss is no longer a sane number, with an error naming the likely cause
    (a learning rate too high) and the last good checkpoint: a loss far above a uniform guess
    over the vocabulary (ln V nats a character), or above two uniform guesses and orders of
    magnitude above the lowest loss of the run. Every step's loss is checked before anything
    is saved, and Validation checks its loss before keeping a best checkpoint, so a diverged
    model never becomes best/."""

    FAR_ABOVE_UNIFORM = 10.0  # x ln V (at least 10 nats): no model that learns anything scores this
    RISE = 100.0              # x the lowest loss so far, once worse than two uniform guesses

    def __init__(self, vocab_size):
        self.vocab_size, self.uniform = vocab_size, math.log(vocab_size)
        self.lowest = math.inf

    def after_step(self, loop):
        last = loop.trainer.last_loss  # None when the step was skipped: the Trainer counts those
        if last is not None:
            self.check(loop.trainer, last[0], f"the training loss at step {loop.step}")

    def check(self, trainer, loss, what):
        """Raise the Trainer's divergence error if loss (nats a character) is not sane."""
        far = loss > self.FAR_ABOVE_UNIFORM * max(self.uniform, 1.0)
        rising = loss > 2 * self.uniform and loss > self.RISE * self.lowest
        self.lowest = min(self.lowest, loss)
        if far or rising:
            raise trainer.diverged(
                f"{what} is {loss:.3g} nats a character, where a uniform guess over the {self.vocab_size} "
                f"characters scores {self.uniform:.2f}: the learning rate (--lr {trainer.cfg.lr:g}) is likely too high")


class Validation(Piece):
    """Every `every` steps and at the end, score the held-out text, log it, and keep the
    best checkpoint (from the chief) once `divergence` finds the loss sane. durations: the
    seconds of each, for budget.TimeLimit; last: (step, loss) of the last one, for
    plateau.KeepBest."""

    def __init__(self, every, divergence):
        self.every, self.divergence, self.durations, self.last = every, divergence, [], None

    def after_step(self, loop):
        if loop.step % self.every == 0 and loop.chief:
            self.run(loop, loop.interrupt)

    def at_end(self, loop):
        if loop.interrupt.signum is None and loop.step % self.every and loop.step > loop.start_step and loop.chief:
            self.run(loop)

    def run(self, loop, interrupt=None):
        """One validation; a signal (interrupt) stops it between chunks: nothing is logged
        then. Returns its seconds, None when nothing was scored."""
        trainer, valid = loop.trainer, loop.corpus.valid
        stop = (lambda: interrupt.signum is not None) if interrupt else (lambda: False)
        started = budget.now()
        result = trainer.validate(valid, stop) if len(valid) else None
        if result is None:
            return None
        self.durations.append(budget.now() - started)
        loss, accuracy = result
        self.last = (loop.step, loss)
        loop.logs.validation(loop.step, loss, accuracy)
        self.divergence.check(trainer, loss, f"the validation loss at step {loop.step}")
        best = trainer.best_val_loss is None or loss < trainer.best_val_loss
        if best:
            trainer.progress["best_val_loss"].assign(loss)
            trainer.save(trainer.best)
        loop.console.validated(loop.step, loss, accuracy, best)
        return self.durations[-1]


class Sample(Piece):
    """Every `every` steps, print and log a sample that starts from a zero state; its
    seed follows the step (from the chief). A --max-time run (clock: its budget.TimeLimit)
    also samples by the clock, so that a short run shows text early: at its first
    validation or after FIRST_SAMPLE_SECONDS, then every SAMPLE_SECONDS; never before
    its plan, whose calibration would time a sample as training."""

    def __init__(self, every, generator, clock=None):
        self.every, self.generator, self.clock = every, generator, clock
        self.last = None  # the clock's seconds at the last sample of this process, or when it first looked
        self.count = 0

    def after_step(self, loop):
        if loop.chief and (loop.step % self.every == 0 or self.time_for_one(loop)):
            self.sample(loop)

    def time_for_one(self, loop):
        if self.clock is None or not self.clock.planned:
            return False
        if self.last is None:
            self.last = self.clock.seconds
        if not self.count and loop.validation.durations:
            return True
        return self.clock.seconds - self.last >= (SAMPLE_SECONDS if self.count else FIRST_SAMPLE_SECONDS)

    def sample(self, loop):
        ids = next(self.generator.stream(length=SAMPLE_CHARS, seed=self.generator.config.seed + loop.step))[0]
        text = self.generator.vocab.decode(ids)
        Console.write(f"--- sample at step {loop.step} ---\n{text}\n---")
        loop.logs.sample(loop.step, text)
        self.count += 1
        if self.clock is not None:
            self.last = self.clock.seconds


class Checkpoint(Piece):
    """A checkpoint every `every` steps, and at the end unless this step has one."""

    def __init__(self, every):
        self.every = every

    def after_step(self, loop):
        if loop.step % self.every == 0:
            loop.trainer.save(loop.trainer.recent)

    def at_end(self, loop):
        if loop.trainer.recent.steps[-1:] != [loop.step]:
            loop.trainer.save(loop.trainer.recent)


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
