"""The learning rate at each step, and --max-time turned into a number of steps.

    learning_rate(cfg, step, total)   warm-up, then cosine or linear decay to a floor
    Budget                            the wall time of a --max-time run, and its plan in steps

A resumed run must compute exactly what an uninterrupted one would, so nothing
here reads the clock to decide a learning rate: the rate is a function of the
step and of the run's length in steps. For a --max-time run that length comes
from the clock once: after a short calibration window the step and validation
times are measured, the steps that fit in the time left are planned, and the
plan is saved in the checkpoint; from then on, and in every resumed process, the
schedule runs on the saved plan. The clock still stops the run at its deadline:
when the load on the machine rises, before the plan's end; when it falls, the plan
ends early and the run goes on at the final learning rate until the deadline.

Standard library only (no TensorFlow).
"""

import math
import time

CALIBRATION_SECONDS = 20.0  # steps timed before the plan: long enough to average out a few slow ones
CALIBRATION_SHARE = 0.05    # ... but at most this share of a short budget
SAVE_SECONDS = 3.0          # kept back for the last checkpoint, the summary and the exit
VALIDATION_MARGIN = 1.5     # the last validation may take this much longer than the one timed


def now():
    """The clock of budgets: seconds, monotonic (tests replace it)."""
    return time.monotonic()


def learning_rate(cfg, step, total=None):
    """The learning rate of the update that makes step `step` (1, 2, ...).

    A linear warm-up over the first cfg.warmup_steps (from lr/warmup_steps up to
    cfg.lr), then cfg.decay over the steps left until `total`: cosine or linear down
    to cfg.min_lr_ratio x cfg.lr, the rate of the last step. total None (a --max-time
    run before its plan) holds the rate at cfg.lr after the warm-up.
    """
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.decay == "none" or total is None:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.decay == "cosine":
        left = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # linear
        left = 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * left)


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
        self.window_start = None       # (time, step) where the calibration window opened
        self.validation_seconds = None  # the last validation's duration, from the second one on
        self.validations = 0           # in this process
        self.in_window = 0.0           # validation time inside the window, not part of a step

    def spent(self):
        return now() - self.origin

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
