"""What a training run prints while it works, and when it ends.

On a terminal, one progress bar for the whole run (not one per epoch). Every
field around it has a fixed width, so the bar never jumps; at 80 columns the
bar itself keeps 14 cells for a run of up to 9,999 steps (the default has 8,170):

     120/1200  10%|█▍            | 0:01:02<0:09:18 loss 2.345 val 2.456  13.2k ch/s

Piped to a file (nohup, CI, a cluster job), a plain line every --log-every steps:

    step 120/1200  loss 2.345  val 2.456  13,250 chars/s  elapsed 0:01:02  left 0:09:18

Validation results and samples are lines on standard output either way; the
summary at the end says what was reached and what to run next.
"""

import math
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from charrnn.cli import command, tensorboard_command

SMOOTHING = 0.3  # weight of the newest window in the chars/s shown: steady, yet follows changes


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_speed(chars_per_s):
    """Six characters wide: ' 13.2k', '  1.2M'."""
    if chars_per_s is None:
        return "  -.-k"
    if chars_per_s < 999_950:
        return f"{chars_per_s / 1e3:5.1f}k"
    return f"{chars_per_s / 1e6:5.1f}M"


def nats(loss):
    """A loss as the console shows it: nats and bits per character."""
    return f"{loss:.4f} nats ({loss / math.log(2):.3f} bits/char)"


@dataclass
class Window:
    """The steps since the last log line: mean loss and accuracy of the finite ones, speed."""

    loss: float
    accuracy: float
    chars_per_s: float
    steps: int


class Console:
    """The run's progress bar or plain lines, validation lines, and the final summary."""

    def __init__(self, total_steps, start_step, chars_per_step):
        """total_steps: None while unknown (a --max-time run before its plan); see set_total."""
        self.total, self.step, self.start_step = total_steps, start_step, start_step
        self.chars_per_step = chars_per_step
        self.window_chars, self.window_start = 0, time.perf_counter()
        self.started = time.perf_counter()
        self.speed = None     # smoothed chars/s
        self.windows = 0      # log windows closed so far
        self.train_loss, self.train_loss_steps = None, 0  # the last window's mean loss, over so many steps
        self.val_loss = None
        self.bar = None
        self.notes = []       # lines for the summary (what a piece did to the run)

    def __enter__(self):
        # tqdm formats everything but the bar from a list postfix as is (no ", " before it),
        # and `n` padded to the width of the total, so no field changes width.
        self.bar = tqdm(total=self.total, initial=self.step, file=sys.stderr, dynamic_ncols=True, disable=None,
                        leave=False, postfix=[self.postfix()], bar_format=self.bar_format())
        return self

    def bar_format(self):
        if self.total is None:  # a --max-time run before its plan: steps so far
            return "{n} steps | {postfix[0]}"
        width = len(str(self.total))
        return f"{{n:>{width}}}/{{total}} {{percentage:3.0f}}%|{{bar}}| {{postfix[0]}}"

    def __exit__(self, *exc):
        self.bar.close()

    @property
    def plain(self):
        """True when the output is not a terminal: plain lines instead of a bar."""
        return self.bar is None or self.bar.disable

    @staticmethod
    def write(text):
        """A line on standard output that does not break the bar; flushed, so that a log
        file (nohup, a cluster job) shows it at once, not a buffer later."""
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def advance(self, step):
        """One step done."""
        self.step = step
        self.window_chars += self.chars_per_step
        if not self.plain:
            self.bar.postfix[0] = self.postfix()
            self.bar.update(1)

    def log_window(self, loss, accuracy, steps):
        """Close the current window, whose finite steps had this mean loss and accuracy:
        show it, and return it for the logs."""
        now = time.perf_counter()
        window = Window(loss, accuracy, self.window_chars / max(now - self.window_start, 1e-9), steps)
        self.window_chars, self.window_start = 0, now
        # The first window of a process includes compiling the step: its speed is shown,
        # but the smoothed speed and the estimate of the run's duration start after it.
        self.windows += 1
        if self.windows <= 2 or self.speed is None:
            self.speed = window.chars_per_s
        else:
            self.speed = SMOOTHING * window.chars_per_s + (1 - SMOOTHING) * self.speed
        self.train_loss, self.train_loss_steps = window.loss, window.steps
        if self.windows == 2 and self.total is not None:
            self.write(f"about {format_duration(self.seconds_left())} for the {self.total - self.step:,} steps "
                       f"left, at {self.speed:,.0f} chars/s")
        if self.plain:
            self.write(self.line())
        else:
            self.bar.postfix[0] = self.postfix()
        return window

    def set_total(self, total_steps):
        """The run's length, once known."""
        self.total = self.bar.total = total_steps
        self.bar.bar_format = self.bar_format()
        self.bar.refresh()

    def seconds_left(self):
        if self.total is None:
            return None
        return (self.total - self.step) * self.chars_per_step / self.speed if self.speed else 0.0

    def left(self):
        """The time left as H:MM:SS, once the speed no longer includes compiling the step
        and the run's length is known."""
        left = self.seconds_left()
        return format_duration(left) if self.windows >= 2 and left is not None else "-:--:--"

    def postfix(self):
        """What follows the bar, at a fixed width: elapsed<left, losses, smoothed speed."""
        elapsed = format_duration(time.perf_counter() - self.started)
        loss = f"{self.train_loss:.3f}" if self.train_loss is not None else "-.---"
        val = f"{self.val_loss:.3f}" if self.val_loss is not None else "-.---"
        return f"{elapsed}<{self.left()} loss {loss} val {val} {format_speed(self.speed)} ch/s"

    def line(self):
        val = f"  val {self.val_loss:.3f}" if self.val_loss is not None else ""
        return (f"step {self.step}/{self.total or '?'}  loss {self.train_loss:.3f}{val}  {self.speed:,.0f} chars/s  "
                f"elapsed {format_duration(time.perf_counter() - self.started)}  "
                f"left {self.left()}")

    def validated(self, step, loss, accuracy, best):
        """A line of at most 80 characters for each validation."""
        self.val_loss = loss
        self.write(f"step {step:>7}  validation {loss:.4f} nats, {loss / math.log(2):.3f} bits/char, "
                   f"{accuracy:.1%} right{'  best' if best else ''}")
        if not self.plain:
            self.bar.postfix[0] = self.postfix()

    def note(self, line):
        """A line the summary repeats."""
        self.notes.append(line)

    def summary(self, trainer, run, total_steps):
        """What the run reached and what to run next."""
        from charrnn.checkpoints import step_of  # here: the console itself runs without TensorFlow
        elapsed = time.perf_counter() - self.started
        speed = (self.step - self.start_step) * self.chars_per_step / max(elapsed, 1e-9)
        lines = [f"done: step {self.step} of {total_steps} in {format_duration(elapsed)}, {speed:,.0f} chars/s"]
        if self.train_loss is not None:
            steps = f"{self.train_loss_steps} steps" if self.train_loss_steps > 1 else "step"
            lines.append(f"  training loss    {nats(self.train_loss)}, mean of the last {steps}")
        elif trainer.last_loss is not None:
            lines.append(f"  training loss    {nats(trainer.last_loss[0])}, the last step")
        best = trainer.best_val_loss
        if best is not None and trainer.best.latest:
            lines.append(f"  best validation  {nats(best)} at step {step_of(trainer.best.latest)}")
            lines.append(f"  best checkpoint  {trainer.best.latest}")
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  generate text    {command('rnn_play.py', run.name, *self._checkpoint_dir_flag(run))}")
        lines.append(f"  see the curves   {tensorboard_command(run.config.log_dir)}")
        print("\n".join(lines), file=sys.stderr)

    def interrupted(self, signum, trainer, run):
        saved = f"; checkpoint {trainer.recent.latest}" if trainer.recent.latest else ""
        log_dir = () if run.config.log_dir == "log" else ("--log-dir", run.config.log_dir)  # not saved with the run
        resume = command("rnn_train.py", "--resume", run.name, *self._checkpoint_dir_flag(run), *log_dir)
        print(f"\ninterrupted by signal {signum} at step {self.step}{saved}\n"
              f"  continue with    {resume}",
              file=sys.stderr)

    @staticmethod
    def _checkpoint_dir_flag(run):
        return () if run.config.checkpoint_dir == "checkpoints" else ("--checkpoint-dir", run.config.checkpoint_dir)
