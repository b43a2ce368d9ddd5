"""--max-time: the wall time of a run, its plan in steps, and the piece of the loop that owns them.

    Budget      the arithmetic: time spent across resumes, the calibration window, the plan
    TimeLimit   the loop's piece: the clock in the checkpoint, calibration and plan, "time is up"

A --max-time run's learning-rate schedule needs its length in steps, and that
length comes from the clock once: after a short calibration window the step and
validation times are measured, the steps that fit in the time left are planned,
and the plan is saved in the checkpoint; from then on, and in every resumed
process, the schedule runs on the saved plan. The clock still stops the run at
its deadline: when the load on the machine rises, before the plan's end; when it
falls, the plan ends early and the run goes on at the final learning rate until
the deadline.
"""

import math
import sys
import time

from charrnn.config import warmup_warning
from charrnn.console import Console, format_duration
from charrnn.errors import UserError

CALIBRATION_SECONDS = 20.0  # steps timed before the plan: long enough to average out a few slow ones
CALIBRATION_SHARE = 0.05    # ... but at most this share of a short budget
SAVE_SECONDS = 3.0          # kept back for the last checkpoint, the summary and the exit
VALIDATION_MARGIN = 1.5     # the last validation may take this much longer than the one timed
CLOCK = ("seconds", "planned_steps", "planned_for")  # the checkpoint's progress entries of the run's time and plan


def now():
    """The clock of budgets: seconds, monotonic (tests replace it)."""
    return time.monotonic()


class Budget:
    """The wall time of a --max-time run, counted across resumes, and its plan in steps.

    seconds: the budget (None: no limit, the time is only counted); spent: what earlier
    processes spent on the run (saved in the checkpoint); planned: the plan an earlier
    process saved, 0 for none yet; started: when this process started (a now() reading),
    so that its start-up counts too. The loop tells it about every step (`stepped`) and
    validation (`validated`); once the calibration window is over, `ready_to_plan` is
    true and `plan` fixes the steps the schedule spans. `over` is true when the time left
    is needed for the last validation and checkpoint.
    """

    def __init__(self, seconds, spent=0.0, planned=0, started=None):
        self.seconds, self.planned = seconds, planned
        self.origin = (now() if started is None else started) - spent  # the run's time zero, on this clock
        self.last_spent = spent
        self.window_start = None       # (time, step) where the calibration window opened
        self.validation_seconds = None  # the last validation's duration, from the second one on
        self.validations = 0           # in this process
        self.in_window = 0.0           # validation time inside the window, not part of a step

    def spent(self):
        self.last_spent = now() - self.origin  # kept for TimeLimit.seconds
        return self.last_spent

    def over(self):
        if self.seconds is None:
            return False
        return self.spent() >= self.seconds - self.reserve()

    def reserve(self):
        """The seconds kept back for the last validation and checkpoint."""
        return VALIDATION_MARGIN * (self.validation_seconds or 0.0) + SAVE_SECONDS

    def stepped(self, step, first_step):
        """Call after each step; the window opens after the first two steps of the process,
        which trace and warm up the compiled step."""
        if self.window_start is None and step >= first_step + 2:
            self.window_start = (now(), step)

    def validated(self, seconds):
        """Call after each validation. The first one of a process also traces the
        compiled function, so it times nothing but still counts as time aside."""
        if self.validations:
            self.validation_seconds = seconds
        self.validations += 1
        if self.window_start is not None:
            self.in_window += seconds

    def ready_to_plan(self):
        """True once the window is long enough to plan (always false after the plan)."""
        if self.seconds is None or self.planned or self.window_start is None:
            return False
        length = min(CALIBRATION_SECONDS, CALIBRATION_SHARE * self.seconds)
        return now() - self.window_start[0] - self.in_window >= length

    def plan(self, step, val_every):
        """Fix the steps the schedule spans: those that fit in the time left, at the speed of
        the window, with a validation every val_every steps and one at the end. Returns
        (planned steps, seconds per step)."""
        started, first = self.window_start
        per_step = max(1e-9, (now() - started - self.in_window) / max(1, step - first))
        validation = self.validation_seconds or 0.0  # None: the run has no validation text
        left = self.seconds - self.spent() - self.reserve()
        self.planned = max(step, step + math.floor(left / (per_step + validation / val_every)))
        return self.planned, per_step


class TimeLimit:
    """The loop's piece that owns --max-time: the run's clock and plan in the checkpoint
    (its `variables`), the calibration window and the plan, and "time is up".

    Without --max-time it only counts the time, saved with each checkpoint."""

    def __init__(self, cfg, started=None):
        import tensorflow as tf  # here, so that rnn_train.py can read the clock before TensorFlow loads
        self.cfg, self.started = cfg, started
        self.variables = {"planned_steps": tf.Variable(0, dtype=tf.int64),
                          "seconds": tf.Variable(0.0, dtype=tf.float64),       # spent over all the run's processes
                          "planned_for": tf.Variable(0.0, dtype=tf.float64)}   # the --max-time the plan was made for
        self.budget = Budget(cfg.max_seconds, started=started)
        self.heard = 0  # validations of this process already told to the budget

    def restored(self):
        """Take up the clock and plan of the checkpoint just restored (zeros when it has none).
        A plan holds for the --max-time it was made for; another --max-time plans again.
        Returns the planned steps, 0 for none."""
        same = float(self.variables["planned_for"].numpy()) == (self.cfg.max_seconds or 0.0)
        planned = int(self.variables["planned_steps"].numpy()) if same else 0
        self.budget = Budget(self.cfg.max_seconds, float(self.variables["seconds"].numpy()), planned, self.started)
        return planned

    @property
    def seconds(self):
        """The run's seconds spent at the last reading of its clock (each step's "time is up"
        check): other pieces read the time without a clock reading of their own."""
        return self.budget.last_spent

    @property
    def planned(self):
        """Whether the run's plan is made (by this process, or saved by an earlier one)."""
        return bool(self.budget.planned)

    def record(self):
        """Before a checkpoint is written: the time spent so far goes into it."""
        self.variables["seconds"].assign(self.budget.spent())

    def nothing_left(self, run):
        """Whether a resumed run has no time left; says so. A run this process starts (new, or
        forked from a checkpoint) with no time left is refused instead (UserError): it would
        train nothing, and runs.Run.claimed removes its folders."""
        if not self.budget.over():
            return False
        spent = format_duration(self.budget.spent())
        if run.source is None:
            raise UserError(f"--max-time {self.cfg.max_time} was spent before the first training step (the start-up "
                            f"took {spent}): nothing was trained and no run was kept; give a longer --max-time")
        what = f"has spent its --max-time {self.cfg.max_time} ({spent}): nothing to train; raise --max-time to go on"
        if run.forked:
            raise UserError(f"--resume {run.prefix}: that run {what}")
        print(f"run {run.name} {what}", file=sys.stderr)
        return True

    def after_step(self, loop):
        budget = self.budget
        for seconds in loop.validation.durations[self.heard:]:
            budget.validated(seconds)
        self.heard = len(loop.validation.durations)
        budget.stepped(loop.step, loop.start_step)
        if budget.ready_to_plan():
            self.plan(loop)
        if self.cfg.max_time and loop.step == loop.trainer.schedule_steps and not loop.finished:
            loop.console.set_total(None)
            Console.write(f"step {loop.step}: the planned steps are done with time left; the run goes on at "
                          f"the final learning rate until --max-time {self.cfg.max_time} is up")
        if budget.over() and not loop.finished:
            loop.stop = True
            Console.write(f"--max-time {self.cfg.max_time} reached at step {loop.step}")

    def at_end(self, loop):
        pass

    def plan(self, loop):
        """Fix the steps the schedule spans, after the calibration window, and save them with
        the run. The validations to come are timed first: the first one of a process also
        traces, so it is timed again, silently (the score is the same)."""
        budget, valid = self.budget, loop.corpus.valid
        while budget.validation_seconds is None and len(valid):
            if budget.validations:
                started = now()
                loop.trainer.validate(valid, lambda: False)
                budget.validated(now() - started)
            elif loop.validation.run(loop) is None:
                break  # too short to score
            else:
                budget.validated(loop.validation.durations[-1])
                self.heard += 1
        planned, per_step = budget.plan(loop.step, self.cfg.val_every)
        self.variables["planned_steps"].assign(planned)
        self.variables["planned_for"].assign(self.cfg.max_seconds)
        total = loop.trainer.set_schedule(planned)
        loop.trainer.save(loop.trainer.recent)  # a process killed before the next checkpoint resumes on this plan
        loop.console.set_total(total)
        Console.write(f"--max-time {self.cfg.max_time}: {total:,} steps planned ({per_step:.3f} s a step"
                      + (f", {budget.validation_seconds:.1f} s a validation" if budget.validation_seconds else "")
                      + "); the learning-rate schedule spans them")
        warning = warmup_warning(self.cfg, total, f"planned for --max-time {self.cfg.max_time}")
        if warning and total != self.cfg.max_steps:  # else rnn_train.py warned about --max-steps already
            Console.write(warning)
