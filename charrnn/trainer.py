"""What a training step changes, in one checkpoint: the model, Adam, the carried state, the step.

The RNN state is carried from batch to batch in tf.Variables (the sequencer's
rows continue each other), and it is saved with the checkpoint, with the
optimizer, the dropout seed generators and the step, so that a resumed run
computes exactly what an uninterrupted one would have.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

from charrnn import checkpoints, precision, steps
from charrnn.console import Console
from charrnn.errors import UserError
from charrnn.model import CharRNN


class Trainer:
    """The model and everything a training step changes.

    Holds the model, Adam, the RNN state carried between batches and the step, all
    inside the compiled step (steps.make_train_step), which also sets the learning
    rate and sums the loss for the log: Python reads them back only to log or save.
    A non-finite step changes nothing; after max_nonfinite in a row the run stops.
    Built under strategy.scope(), the step runs on every replica.
    clock: the budget.TimeLimit whose clock and plan the checkpoint holds, or None.
    keep: the plateau.KeepBest whose state the checkpoint holds and whose lr_scale
    multiplies the learning rate, or None.
    """

    def __init__(self, model_config, cfg, nb_batches=0, clock=None, keep=None):
        self.cfg, self.clock, self.keep = cfg, clock, keep
        keras.utils.set_random_seed(cfg.seed)
        self.choice = precision.for_this_machine(cfg.precision)  # the matmuls' dtype, and why
        if self.choice.warning:
            print(self.choice.warning, file=sys.stderr)
        self.model = CharRNN(model_config, implementation=cfg.implementation, precision=self.choice.precision)
        self.named = self.model.named_variables()  # every variable is built: it can be restored
        self.optimizer = steps.make_optimizer(cfg, self.named)
        self.states = [tf.Variable(s, trainable=False) for s in self.model.initial_states(cfg.batch_size)]
        self.progress = {"step": tf.Variable(0, dtype=tf.int64),
                         "best_val_loss": tf.Variable(checkpoints.NOT_VALIDATED, dtype=tf.float64)}
        # The step limit: --max-steps, else the steps of --epochs; None for a --max-time run
        # without --max-steps, which stops at its deadline.
        self.step_limit = cfg.max_steps or (None if cfg.max_time else cfg.epochs * nb_batches)
        self.schedule = tf.Variable(self.step_limit or 0, dtype=tf.int64)  # the steps the schedule spans; 0: unknown
        self.window = tf.Variable(tf.zeros(3, tf.float64))  # the finite steps' loss, accuracy and count, since the log
        self.last = None  # the last step's (loss, accuracy) tensors, None when it was skipped
        if tf.distribute.has_strategy() and self.choice.precision == "fp16":
            raise UserError("--precision fp16 with --distribute is not supported (its loss scaling runs on "
                            "one device); use --precision bf16 or fp32")
        loss_scale = precision.LossScale() if self.choice.precision == "fp16" else None
        rate = steps.scheduled_rate(cfg, self.schedule, keep and keep.lr_scale)
        self.compiled_step = steps.make_train_step(
            self.model, self.optimizer, list(self.named.values()), self.states, cfg.clip_norm, loss_scale,
            self.progress["step"], rate, self.window)
        self.validate = steps.make_validate(self.model, cfg.seqlen, cfg.val_chars)
        self.flops_per_char = 3 * model_config.flops_per_char()
        self.nonfinite_in_a_row = 0
        self.checkpoint = self.recent = self.best = None

    def attach(self, run, vocab):
        """Make the run's checkpoint of all this, and its managers: the recent ones and the best."""
        self.vocab_fingerprint = vocab.fingerprint()
        self.checkpoint = checkpoints.training_checkpoint(self.model, self.optimizer,
                                                          {**self.progress, **self.piece_variables()},
                                                          self.states, self.vocab_fingerprint)
        size = checkpoints.size_of([*self.named.values(), *self.optimizer.variables, *self.states])
        self.recent, self.best = run.managers(self.checkpoint, size)

    @property
    def step(self):
        return int(self.progress["step"].numpy())  # .numpy(): also a mirrored variable

    @property
    def best_val_loss(self):
        best = float(self.progress["best_val_loss"].numpy())
        return None if best >= checkpoints.NOT_VALIDATED else best

    @property
    def last_loss(self):
        """(loss, accuracy) of the last step, None when it was skipped or none ran."""
        return None if self.last is None else tuple(float(v) for v in self.last)

    @property
    def schedule_steps(self):
        """The steps the learning-rate schedule spans: the step limit, or a --max-time run's
        plan (within the limit); None for a --max-time run before its plan."""
        return int(self.schedule.numpy()) or None

    def set_schedule(self, planned):
        """A --max-time run's plan: the schedule spans it, within the step limit. Returns the steps."""
        self.schedule.assign(min(planned, self.step_limit or planned) if planned else self.step_limit or 0)
        return self.schedule_steps

    def finished(self, step=None):
        return self.step_limit is not None and (self.step if step is None else step) >= self.step_limit

    def restore(self, prefix, vocab_file):
        """Restore the run from a checkpoint, and the clock's plan with it. A checkpoint from
        before the run's clock was saved restores without it (zeros)."""
        checkpoints.restore(self.checkpoint, prefix, what="run", vocabulary=(self.vocab_fingerprint, vocab_file),
                            optional=tuple(self.piece_variables()))
        if self.clock:
            self.set_schedule(self.clock.restored())

    def piece_variables(self):
        """The checkpoint's progress entries that the clock and KeepBest own (optional on restore)."""
        return {**(self.clock.variables if self.clock else {}), **(self.keep.variables if self.keep else {})}

    def restore_best(self):
        """Put the run's best checkpoint's weights, Adam and carried state into this run; the
        step, the clock and the best loss stay."""
        sections = self.checkpoint
        best = tf.train.Checkpoint(weights=sections.weights, rng=sections.rng, optimizer=self.optimizer,
                                   state=sections.state)
        status = best.restore(self.best.latest)  # written by this run: its progress is left unread
        status.assert_existing_objects_matched()
        status.expect_partial()

    def train_step(self, x, y):
        """One step on batch (x, y) [B, T] at the schedule's learning rate; False when it was skipped."""
        loss, accuracy, finite = self.compiled_step(x.astype(np.int32), y.astype(np.int32))
        if bool(finite):  # the one value read back every step: a skipped step is told at once
            self.nonfinite_in_a_row, self.last = 0, (loss, accuracy)  # the step's outputs: no op to read them
            return True
        self.last = None
        self.skipped(self.step)
        return False

    def read_window(self):
        """(mean loss, mean accuracy, steps) of the finite steps since the last call, then
        starts a new window; None when there was none (the window goes on)."""
        loss, accuracy, count = self.window.numpy()
        if not count:
            return None
        self.window.assign(tf.zeros(3, tf.float64))
        return loss / count, accuracy / count, int(count)

    def skipped(self, step):
        """Count a non-finite step; stop the run after too many in a row."""
        self.nonfinite_in_a_row += 1
        Console.write(f"step {step}: non-finite loss or gradient, step skipped ({self.nonfinite_in_a_row} in a row)")
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            raise self.diverged(f"{self.nonfinite_in_a_row} non-finite steps in a row at step {step}")

    def diverged(self, what):
        """The error that ends a diverged run: what went wrong, the last good checkpoint, the fix."""
        latest = self.recent.latest if self.recent else None
        where = (f"the last good checkpoint is {latest}; lower --lr or --clip-norm and --resume" if latest else
                 "no checkpoint was written; start a new run (another --run) with a lower --lr or --clip-norm")
        return UserError(f"training diverged: {what}; {where}")

    def save(self, manager):
        """Write a checkpoint unless some value is not finite: no checkpoint ever holds NaN or Inf.

        During a run of skipped (non-finite) steps nothing is written either, so the
        newest checkpoint stays the last one known to train well."""
        if self.nonfinite_in_a_row:
            return None
        if self.clock:
            self.clock.record()
        for name, v in list(self.named.items()) + [(f"state {i}", s) for i, s in enumerate(self.states)]:
            if not np.all(np.isfinite(v.numpy())):
                Console.write(f"step {self.step}: {name} is not finite; checkpoint not written, "
                              f"the last good one is kept")
                return None
        return manager.save(self.step)
