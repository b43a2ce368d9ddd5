"""The --preset quality recipe: the model, its regularisation and its validation, chosen
from the size of the text, the time budget and this machine's speed.

    choose(train_chars, valid_chars, seconds, speeds, vocab)  -> Choice(flags, reason)
    choose_measured(...)         choose, probing each width it picks until the pick is measured
    measure_speed(cfg, vocab, units)  chars/s of the real training step of GRU 2xunits here, now (TensorFlow)
    text_size(globs)             the characters a run will train on and hold out, and its symbols

The model is built before the run's own calibration, so the choice keys on a probe
timed before the run starts: two seconds of the real training step of the narrowest
candidate (GRU 2x256, batch 64, sequences of 64; none for a budget under two minutes),
built as the run's will be (its
precision, kernels and threads), so it sees the matmul rate, the element-wise work, the
cores this process may use and the load of a shared machine alike. From it, each
candidate shape's speed follows from its cost (`char_cost`), and with the budget: the
steps it would make and the passes over the text they read. A wider choice is probed
too, and the choice made again from its measured speed, until the chosen width is one
measured (the costs alone are not exact across CPUs). The rule (docs/recipe.md has the
grid it comes from):

- the widest candidate whose planned characters (steps x batch x sequence) reach
  MIN_CHARS_PER_WEIGHT for each of its weights (below it, a narrower model that makes more
  steps ends lower: a wider model needs more steps, not a fixed number) and whose weights
  do not outnumber the training characters by more than MAX_PARAMS_PER_CHAR (more only
  memorises a small text);
- dropout grows with the exposure, the passes over the text times the weights per
  training character (a large model overfits a text in fewer passes than a small
  one): none on a first pass or up to FREE_EXPOSURE, then 0.1 per doubling, rounded
  down to 0.05, up to MAX_DROPOUT; a model wider than the narrowest keeps MIN_DROPOUT
  past a first pass (on a text whose held-out part is unlike its training part, code
  for one, dropout helped at any exposure; on one like it, Shakespeare, it cost the
  wider model little and the narrowest more);
- weight decay (AdamW) follows the exposure: WEIGHT_DECAY where it needs no dropout,
  OVERFIT_WEIGHT_DECAY where it does (at 14 passes, 2x384 with dropout 0.15 ended 0.030
  lower with 0.5 than with 0.1, 0.024 lower than with 0.9);
- the learning rate falls as the width grows, LR_UNITS / units, and rises with the steps
  past LR_STEPS, to at most MAX_LR, or REREAD_MAX_LR where the run reads its text
  REREAD_PASSES times or more (at 2,000 steps 2x256 ended best at 0.005 among 0.003,
  0.005 and 0.008; at 2,300 steps 2x512 ended better at 0.003 than at 0.005, at 7,051
  better at 0.005 than at 0.0035 and 0.0025; at 3,850 steps 2x384 ended 0.011 lower at
  0.005 than at 0.0036; 0.007 against 0.005: 0.015 lower for 2x256 at 3,700 steps and
  0.005 for 2x384 at 6,400 on 52 MB of Python, 0.013 lower for 2x256 on 5 MB of Shakespeare,
  0.007 higher on 5 MB of Python, a tie on tiny-shakespeare at 3,500 and 7,400 steps; for
  2x384 at 6,000 steps on 5 MB of Python and of Shakespeare, 0.004 and 0.007 lower; past
  the cap, 0.009 ended lower where the text is read several times, 0.001-0.010, and
  0.010-0.013 higher on 52 MB, read once);
- validation takes about VALIDATION_SHARE of the budget: VALIDATIONS validations (enough
  to keep a best checkpoint near the best point) of as many held-out characters as that
  share pays for, between MIN_VAL_CHARS and the default cap; where even MIN_VAL_CHARS
  would cost more, fewer validations (MIN_VALIDATIONS at least).

No TensorFlow at import (numpy, through text.py); measure_speed imports it when called.
"""

import contextlib
import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass

from charrnn.config import ModelConfig, TrainConfig
from charrnn.text import find_files

WIDTHS = (256, 384, 512, 768)  # the candidates: 2 GRU layers of these units (wider: not measured)
LAYERS, EMBEDDING, BATCH, SEQLEN = 2, 64, 64, 64
MIN_CHARS_PER_WEIGHT = 8.0  # planned characters a weight a wider model needs to beat a narrower one (docs/recipe.md)
MAX_PARAMS_PER_CHAR = 5.0  # weights per training character
MAX_DROPOUT = 0.4
MIN_DROPOUT = 0.1          # past a first pass, wider than WIDTHS[0] (docs/recipe.md)
FREE_EXPOSURE = 6.0        # passes x weights per training character that need no dropout
WEIGHT_DECAY = 0.1         # AdamW's, where the exposure needs no dropout (a text read a few times)
OVERFIT_WEIGHT_DECAY = 0.5  # ... and where it does (docs/recipe.md)
LR_UNITS = 0.005 * 256     # the learning rate x the units: 0.005 at 2x256, 0.0025 at 2x512 (docs/recipe.md)
LR_STEPS = 2500            # ... for runs of up to these steps; a longer run takes a rate as many times higher
MAX_LR = 0.007             # ... up to this (docs/recipe.md)
REREAD_MAX_LR = 0.009      # ... or this, for a run that reads its text at least REREAD_PASSES times
REREAD_PASSES = 5.0        # (0.009 ended lower at 5.5 and 30 passes, higher at 0.5: docs/recipe.md)
VALIDATION_SHARE = 0.05    # of the budget
VALIDATIONS = 10           # in a run: the best checkpoint is within a tenth of the run of the best point
MIN_VALIDATIONS = 4        # on a slow machine, fewer, but enough to keep a best checkpoint
MIN_VAL_CHARS = 100_000    # fewer give a loss too noisy to rank checkpoints (about 0.005 nats)
FEWEST_VAL_CHARS = 20_000  # ... but a machine too slow for even those validates at least these
MAX_VAL_CHARS = TrainConfig.val_chars
STARTUP_SECONDS = 30.0     # tracing the run's step and the first validation, the last checkpoint
ELEMENTWISE_FLOPS = 4000.0  # a step's element-wise work, per layer, unit and character, in matmul FLOPs
PROBE_UNITS = WIDTHS[0]    # the probe trains the narrowest candidate: the quickest to trace
PROBE_SECONDS = 2.0        # of timed steps, after WARMUP_STEPS that trace and warm up the step
PROBE_WINDOWS = 4          # ... in windows: the fastest counts
PROBE_BUDGET = 120.0       # a shorter budget is planned unprobed, at ASSUMED_SPEED (see choose_measured)
ASSUMED_SPEED = 20_000.0   # chars/s of GRU 2x256: a 2-core CPU's, within 2x of those measured
WARMUP_STEPS = 4
SAMPLE_BYTES = 8 << 20     # read to estimate the vocabulary: a fraction of a second
EVAL_SPEEDUP = 3.0         # a validated character costs a third of a trained one (no backward)


@dataclass(frozen=True)
class Choice:
    flags: dict   # TrainConfig fields
    reason: str   # for the new-run line


def char_cost(units, layers=LAYERS, vocab=100):
    """A training character's cost in matmul FLOPs: forward and backward matmuls, plus
    the element-wise work, which grows with the units, not their square."""
    model = ModelConfig(vocab_size=vocab, layers=layers, units=units, embedding=EMBEDDING)
    return 3 * model.flops_per_char() + ELEMENTWISE_FLOPS * layers * units


def chars_per_second(units, speed, vocab=100, of=PROBE_UNITS):
    """Training characters a second of GRU 2xunits on a machine where GRU 2x`of` trained
    `speed` characters a second, by their costs (char_cost)."""
    return speed * char_cost(of, vocab=vocab) / char_cost(units, vocab=vocab)


def estimate(units, speeds, vocab=100):
    """Training chars/s of GRU 2xunits from speeds, {units: chars/s} measured here: its own
    when measured, else the widest measured below it (the narrowest above when none) scaled
    by the costs."""
    if units in speeds:
        return speeds[units]
    below = [u for u in speeds if u < units]
    of = max(below) if below else min(speeds)
    return chars_per_second(units, speeds[of], vocab, of)


def choose(train_chars, valid_chars, seconds, speeds, vocab=100, assumed=False):
    """The recipe for a run of `seconds` on train_chars characters (valid_chars held out),
    on a machine where the widths in speeds ({units: chars/s}, measure_speed) trained at
    those speeds. Returns a Choice; measure its width too and choose again until it is
    measured (the 2x256 probe scaled by the costs read a 2-core Zen 3's 2x512 1.66x fast).
    assumed: speeds is a guess, not a measurement (the reason says so)."""
    train_seconds = max(1.0, seconds * (1 - VALIDATION_SHARE) - STARTUP_SECONDS)

    def steps(units):
        return train_seconds * estimate(units, speeds, vocab) / (BATCH * SEQLEN)

    def params(units):
        return ModelConfig(vocab_size=vocab, layers=LAYERS, units=units, embedding=EMBEDDING).parameters()

    fitting = [u for u in WIDTHS if steps(u) * BATCH * SEQLEN >= MIN_CHARS_PER_WEIGHT * params(u)
               and params(u) <= MAX_PARAMS_PER_CHAR * train_chars]
    units = max(fitting, default=WIDTHS[0])
    planned, chars_s = steps(units), estimate(units, speeds, vocab)
    passes = planned * BATCH * SEQLEN / max(1, train_chars)
    weights_per_char = params(units) / max(1, train_chars)
    eval_chars_s = EVAL_SPEEDUP * chars_s
    dropout, weight_decay = regularisation_for(passes, weights_per_char, units)
    flags = dict(layers=LAYERS, units=units, embedding=EMBEDDING, batch_size=BATCH, seqlen=SEQLEN,
                 lr=lr_for(units, planned, passes), dropout=dropout, weight_decay=weight_decay,
                 **validation_for(planned, valid_chars, seconds, eval_chars_s))
    read = min(flags["val_chars"], valid_chars)
    share = (planned / flags["val_every"] + 1) * read / eval_chars_s / seconds
    how = "an assumed" if assumed else "a measured" if units in speeds else "an estimated"
    reason = (f"{train_chars / 1e6:.1f} MB, about {passes:.2g} passes in {seconds / 60:.3g} min "
              f"({planned:,.0f} steps at {how} {chars_s:,.0f} chars/s): "
              f"GRU {LAYERS}x{units} ({weights_per_char:.2g} weights a training character), "
              f"learning rate {flags['lr']:g}, dropout {flags['dropout']:g}, weight decay {flags['weight_decay']:g}; "
              f"validation every {flags['val_every']} steps "
              f"on {read:,} chars, about {share:.0%} of the time")
    return Choice(flags, reason)


def choose_measured(train_chars, valid_chars, vocab, seconds_left, measure, wider=True):
    """choose() from measure(units) (chars/s: measure_speed) of GRU 2xPROBE_UNITS and, when
    wider, of each width chosen, until the chosen width is one measured: at most one probe
    a width. seconds_left(): the budget left, after the probes so far.
    A budget under PROBE_BUDGET is planned at ASSUMED_SPEED, with no probe: tracing the
    probe's step takes 10-25 s of a 2-core CPU, a large share of such a budget, and at it
    no width above PROBE_UNITS makes MIN_CHARS_PER_WEIGHT on any CPU measured."""
    if seconds_left() < PROBE_BUDGET:
        return choose(train_chars, valid_chars, seconds_left(), {PROBE_UNITS: ASSUMED_SPEED}, vocab, assumed=True)
    speeds, units = {}, PROBE_UNITS
    while units not in speeds:
        speeds[units] = measure(units)
        choice = choose(train_chars, valid_chars, seconds_left(), speeds, vocab)
        units = choice.flags["units"] if wider else units
    return choice


def lr_for(units, steps, passes=1.0):
    """Adam's peak learning rate for a GRU of these units trained for these steps, which
    read its text this many times."""
    cap = REREAD_MAX_LR if passes >= REREAD_PASSES else MAX_LR
    return round(min(cap, LR_UNITS / units * max(1.0, steps / LR_STEPS)), 5)


def dropout_for(passes, weights_per_char):
    """None on a first pass, or while the exposure (passes x weights per training
    character) is at most FREE_EXPOSURE; then 0.1 more per doubling of it, rounded down
    to 0.05 (at an exposure of 22, 0.18: 0.15 ended 0.003-0.008 lower than 0.2)."""
    exposure = passes * weights_per_char
    rate = 0.1 * math.log2(exposure / FREE_EXPOSURE) if passes > 1 and exposure > FREE_EXPOSURE else 0.0
    return math.floor(min(MAX_DROPOUT, rate) * 20 + 1e-9) / 20  # down to 0.05 (1e-9: 0.15 in floats stays 0.15)


def regularisation_for(passes, weights_per_char, units):
    """(dropout, weight decay) of GRU 2xunits: dropout_for's dropout, at least MIN_DROPOUT
    past a first pass of a model wider than WIDTHS[0]; OVERFIT_WEIGHT_DECAY where the
    exposure needs dropout, WEIGHT_DECAY where only the floor gives it. At about 5.5
    passes of 5 MB (an exposure of 1.8, none by dropout_for), 2x384 ended 0.040 lower with
    0.1 than with none on Python, 0.005 higher on Shakespeare; at 3 passes 2x256 ended
    0.018 lower with 0.1 on Python, 0.018 higher on Shakespeare (docs/recipe.md)."""
    dropout = dropout_for(passes, weights_per_char)
    floor = MIN_DROPOUT if passes > 1 and units > WIDTHS[0] else 0.0
    return max(dropout, floor), OVERFIT_WEIGHT_DECAY if dropout else WEIGHT_DECAY


def validation_for(planned_steps, valid_chars, seconds, eval_chars_s):
    """--val-every and --val-chars that spend about VALIDATION_SHARE of the budget:
    VALIDATIONS validations of as many held-out characters as the share pays for (at least
    MIN_VAL_CHARS); where that many cost more, fewer validations, and on a machine too slow
    for MIN_VALIDATIONS of them, fewer characters."""
    paid = VALIDATION_SHARE * seconds * eval_chars_s  # held-out characters the share pays for
    read = min(valid_chars, max(MIN_VAL_CHARS, paid / (VALIDATIONS + 1))) or 1  # +1: the plan times one more
    validations = min(VALIDATIONS, int(paid / read) - 1)
    if validations < MIN_VALIDATIONS:
        validations, read = MIN_VALIDATIONS, max(FEWEST_VAL_CHARS, paid / (MIN_VALIDATIONS + 1))
    val_chars = int(min(MAX_VAL_CHARS, max(read, FEWEST_VAL_CHARS)) // 1000 * 1000)
    every = planned_steps / validations
    val_every = int(every) // 10 * 10 if every >= 50 else max(1, int(every))  # >= 50: on a logged step
    return dict(val_every=val_every, val_chars=val_chars, sample_every=max(val_every, 1000),
                checkpoint_every=max(val_every, 1000))


def text_size(globs, tail=0.1, sample_bytes=SAMPLE_BYTES):
    """(training characters, held-out characters, symbols) of the text, estimated before it
    is read: the characters from the files' sizes in bytes, the vocabulary (which sets the
    readout's cost) from the distinct characters of the first sample_bytes, plus the
    unknown symbol."""
    files = find_files(globs)
    total = sum(os.path.getsize(p) for p in files)
    seen, left = set(), sample_bytes
    for path in files:
        if left <= 0:
            break
        with open(path, "rb") as f:
            raw = f.read(left)
        left -= len(raw)
        seen.update(raw.decode("utf-8", errors="ignore"))
    return int(total * (1 - tail)), int(total * tail), len(seen) + 1


def measure_speed(cfg, vocab, units=PROBE_UNITS, seconds=PROBE_SECONDS, windows=PROBE_WINDOWS):
    """Training characters a second of GRU 2xunits (batch BATCH, sequences of SEQLEN)
    here, now: the real training step, built from cfg as the run's will be (its precision,
    kernels and thread settings), WARMUP_STEPS to trace and warm it up, then `windows`
    windows of seconds / windows each (a step at least); the fastest window's speed. A
    freshly traced step runs slow for a while on some CPUs (a 2-core Zen 5 read 1.5x low
    from one window of a second after two steps), and a transient load only slows
    some windows: the fastest is the speed the run will see. Random characters: the
    speed does not depend on them."""
    import numpy as np
    from charrnn.trainer import Trainer
    probe = dataclasses.replace(cfg, layers=LAYERS, units=units, embedding=EMBEDDING, batch_size=BATCH,
                                seqlen=SEQLEN, max_time="")
    with contextlib.redirect_stderr(io.StringIO()):  # the precision's warning, if any: the run prints it
        trainer = Trainer(probe.model_config(vocab), probe)
    batches = np.random.default_rng(0).integers(0, vocab, (2, BATCH, SEQLEN + 1), dtype=np.int32)
    done = 0

    def step():
        nonlocal done
        trainer.train_step(batches[done % 2, :, :-1], batches[done % 2, :, 1:])
        done += 1

    for _ in range(WARMUP_STEPS):
        step()
    rates = []
    for _ in range(windows):
        began, first = time.perf_counter(), done
        while done == first or time.perf_counter() - began < seconds / windows:
            step()
        rates.append((done - first) * BATCH * SEQLEN / (time.perf_counter() - began))
    return max(rates)
