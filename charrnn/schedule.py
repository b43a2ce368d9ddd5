"""The learning rate at each step: warm-up, then cosine or linear decay to a floor.

A resumed run must compute exactly what an uninterrupted one would, so nothing
here reads the clock: the rate is a function of the step and of the run's
length in steps (for a --max-time run, the plan of budget.py, saved with the run).

numpy only (no TensorFlow): the compiled step passes TensorFlow's numpy (steps.py).
"""

import math

import numpy as np


def learning_rate(cfg, step, total=None, xp=np):
    """The learning rate of the update that makes step `step` (1, 2, ...).

    A linear warm-up over the first cfg.warmup_steps (from lr/warmup_steps up to
    cfg.lr), then cfg.decay over the steps left until `total`: cosine or linear down
    to cfg.min_lr_ratio x cfg.lr, the rate of the last step. total None or 0 (a
    --max-time run before its plan) holds the rate at cfg.lr after the warm-up.
    xp: the array module step and total belong to (tensorflow.experimental.numpy in the step).
    """
    rate = cfg.lr
    if cfg.decay != "none" and total is not None:
        progress = xp.minimum(1.0, (step - cfg.warmup_steps) / xp.maximum(1, total - cfg.warmup_steps))
        left = 0.5 * (1 + xp.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
        rate = xp.where(total > 0, cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * left), cfg.lr)
    if cfg.warmup_steps:
        rate = xp.where(step <= cfg.warmup_steps, cfg.lr * step / cfg.warmup_steps, rate)
    return float(rate) if xp is np else rate
