"""The training loop: truncated backpropagation through time, one compiled step per batch.

    train(config, resume, given)   the whole job, called by rnn_train.py
      runs.open_run                a new, resumed or forked run: folders and saved files
      Trainer (trainer.py)         model, Adam, carried state, checkpoint: what a step changes
      _train                       the loop: the step, then the pieces, each on its own schedule

The pieces run after every step, in order, each owning its state and schedule:
Log, Validation, plateau.KeepBest (--patience), Sample, Checkpoint and
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
from charrnn.config import SamplingConfig, TrainConfig
from charrnn.console import Console
from charrnn.errors import UserError
from charrnn.logs import ACCURACY, CHARS_PER_S, LEARNING_RATE, LOSS, Logs  # noqa: F401 (their tags, for readers)
from charrnn.plateau import KeepBest
from charrnn.sampling import Generator
from charrnn.steps import make_validate  # noqa: F401 (rnn_play.py scores a checkpoint with it)
from charrnn.text import require_batches, rnn_minibatch_sequencer
from charrnn.trainer import Trainer

SAMPLE_CHARS = 300


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
    distribute.note_replicas(run)
    run.save_files(trainer.model.config, corpus.vocab, corpus.files)
    start = trainer.step
    console = Console(trainer.schedule_steps, start, cfg.batch_size * cfg.seqlen)
    validation = Validation(cfg.val_every)
    loop = Loop(trainer, corpus, Logs(run, corpus, start), console, distribute.is_chief(strategy), start,
                validation, step=start)
    generator = Generator(trainer.model, corpus.vocab, SamplingConfig(temperature=0.8, seed=cfg.seed))
    pieces = [Log(cfg.log_every), validation, keep, Sample(cfg.sample_every, generator),
              Checkpoint(cfg.checkpoint_every), clock]
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


class Validation(Piece):
    """Every `every` steps and at the end, score the held-out text, log it, and keep the
    best checkpoint (from the chief). durations: the seconds of each, for budget.TimeLimit;
    last: (step, loss) of the last one, for plateau.KeepBest."""

    def __init__(self, every):
        self.every, self.durations, self.last = every, [], None

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
        best = trainer.best_val_loss is None or loss < trainer.best_val_loss
        if best:
            trainer.progress["best_val_loss"].assign(loss)
            trainer.save(trainer.best)
        loop.console.validated(loop.step, loss, accuracy, best)
        return self.durations[-1]


class Sample(Piece):
    """Every `every` steps, print and log a sample that starts from a zero state; its
    seed follows the step (from the chief)."""

    def __init__(self, every, generator):
        self.every, self.generator = every, generator

    def after_step(self, loop):
        if loop.step % self.every or not loop.chief:
            return
        ids = next(self.generator.stream(length=SAMPLE_CHARS, seed=self.generator.config.seed + loop.step))[0]
        text = self.generator.vocab.decode(ids)
        Console.write(f"--- sample at step {loop.step} ---\n{text}\n---")
        loop.logs.sample(loop.step, text)


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
