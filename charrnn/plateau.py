"""When validation stops improving: the loop's piece that keeps a run from ending worse than its best.

    KeepBest   counts the validations since the last real improvement; after --patience of
               them it ends the run at the best checkpoint (--plateau stop), or restarts
               from it at a lower learning rate (--plateau restart); at the end of any run
               whose last validation is above the best, the final checkpoint gets the best
               weights.

Its state (the last real improvement, the restarts, the learning rate's scale) is in
the checkpoint, so a resumed run makes the same decisions; the validations waited
follow from the step of the last improvement and --val-every.
"""

import tensorflow as tf

from charrnn.checkpoints import NOT_VALIDATED, step_of
from charrnn.console import Console

MIN_DELTA = 0.003      # nats: a smaller gain is noise of the training, not a model getting better
RESTART_LR = 0.5       # --plateau restart: the learning rate's scale at each restart
MAX_RESTARTS = 2       # ... after which the run ends at the best checkpoint


class KeepBest:
    """The loop's piece (a training.Piece) that acts on validation that has stopped improving.

    variables: its state, saved in the run's checkpoint (an earlier checkpoint lacks
    them: they keep their initial values); `lr_scale` multiplies the learning rate in
    the compiled step."""

    def __init__(self, cfg):
        self.cfg = cfg
        # Off across machines: only the chief validates, and the workers must stop together.
        self.on = cfg.patience > 0 and cfg.distribute != "multi-worker"
        self.variables = {"improved_step": tf.Variable(0, dtype=tf.int64),
                          "improved_loss": tf.Variable(NOT_VALIDATED, dtype=tf.float64),
                          "restarts": tf.Variable(0, dtype=tf.int64),
                          "lr_scale": tf.Variable(1.0, dtype=tf.float64)}
        self.restored_at = None  # the step whose weights were replaced by the best, in this process

    @property
    def lr_scale(self):
        return self.variables["lr_scale"]

    def waited(self, step):
        """The validations since the last one that improved by MIN_DELTA or more."""
        every = self.cfg.val_every
        return step // every - int(self.variables["improved_step"].numpy()) // every

    def after_step(self, loop):
        last = loop.validation.last
        if not self.on or last is None or last[0] != loop.step:
            return
        loss = last[1]
        if loss <= float(self.variables["improved_loss"].numpy()) - MIN_DELTA:
            self.variables["improved_step"].assign(loop.step)
            self.variables["improved_loss"].assign(loss)
            return
        if self.waited(loop.step) < self.cfg.patience or not loop.trainer.best.latest:
            return
        restarts = int(self.variables["restarts"].numpy())
        since = (f"validation has not improved by {MIN_DELTA} nats for {self.waited(loop.step)} validations since "
                 f"step {int(self.variables['improved_step'].numpy())} ({self.best(loop)})")
        if self.cfg.plateau == "restart" and restarts < MAX_RESTARTS:
            self.restore_best(loop)
            self.variables["restarts"].assign(restarts + 1)
            self.variables["lr_scale"].assign(RESTART_LR ** (restarts + 1))
            self.variables["improved_step"].assign(loop.step)  # the patience counts anew
            self.say(loop, f"step {loop.step}: {since}: restart {restarts + 1} of {MAX_RESTARTS} from the best "
                           f"checkpoint, at {RESTART_LR ** (restarts + 1):g}x the learning rate")
        else:
            self.restore_best(loop)
            loop.stop = True
            self.say(loop, f"step {loop.step}: {since}: ending early with the best checkpoint's weights")

    def at_end(self, loop):
        """A run that ends above its best (the deadline, the last step) ends with the best weights."""
        last, best = loop.validation.last, loop.trainer.best_val_loss
        if (not self.on or loop.interrupt.signum is not None or self.restored_at == loop.step
                or last is None or last[0] != loop.step or best is None or last[1] <= best
                or not loop.trainer.best.latest):
            return
        self.restore_best(loop)
        loop.trainer.save(loop.trainer.recent)  # this step's checkpoint may be written already
        self.say(loop, f"step {loop.step}: validation {last[1]:.4f} is above the best ({self.best(loop)}): "
                       f"the final checkpoint holds the best checkpoint's weights")

    def restore_best(self, loop):
        loop.trainer.restore_best()
        self.restored_at = loop.step

    @staticmethod
    def best(loop):
        trainer = loop.trainer
        return f"best {trainer.best_val_loss:.4f} at step {step_of(trainer.best.latest)}"

    @staticmethod
    def say(loop, line):
        Console.write(line)
        loop.console.note(line)
