"""Speed and memory figures, printed; each measurement runs in its own process.

    python3 benchmark.py                  # everything (about 8 minutes on 2 cores)
    python3 benchmark.py text train       # some sections: text matmul train generate (corpus memory loop peer precision quality distribute grid web gpu)
    python3 benchmark.py train peer --peer-python ~/torch-venv/bin/python
    python3 benchmark.py train --precision fp32    # the training figures in fp32 only
    python3 benchmark.py precision --data input.txt  # validation loss after training in fp32 and in bf16
    python3 benchmark.py quality --data tinyshakespeare.txt   # the README's ten-minute command, its curve
    python3 benchmark.py gpu              # the GPU path, checked (README: On a GPU)
    python3 benchmark.py grid --grid-data a.txt b.txt --grid-times 2m 10m   # the recipe over texts and budgets

- text:     vocabulary encoding/decoding speed on a 100 MB ASCII text.
- corpus:   reading a 1 GB ASCII file with read_corpus (two streamed passes):
            time, and the peak memory of the process (run it alone; it writes
            the file to a temporary folder).
- memory:   the same short training run (GRU 1x32, 20 steps, a validation at
            the end) on a generated 5 MB and a --memory-mb text, then on the
            large one validating every held-out character (--val-chars 0): each
            process's peak memory, what the peak grows by per byte of text, and
            how long the validation took (the first one traces its function, about
            4 s). MB here are 2^20 bytes. Not in the default set (it writes the
            text to a temporary folder; about 2 minutes at 500 MB).
- matmul:   the machine's fp32 matrix-multiply rate (best of numpy and TensorFlow)
            and TensorFlow's bf16 rate, at 4096^3 and at the model's shapes
            (the hoisted input projection, the recurrent matmuls), in one process.
- train:    training chars/s of the real training step (Adam, clipping, carried
            state) for (a) GRU 3x512, seq 30, batch 200 and (b) GRU 2x256, seq 64,
            batch 64, in each --precision (interleaved in one process, so their
            ratio is not at the mercy of a busy machine), as a fraction of the FLOP
            bound = that precision's matmul rate / (3 x forward FLOPs per char), and
            the peak memory of that process; with the default implementation and,
            as a baseline, the stock Keras layers in fp32 in the same loop, each
            with rnn_train.py's thread settings for it.
- loop:     what the training command costs beyond its step: rnn_train.py's own
            chars/s at (a) and (b) in the first --precision (a fresh process, 300
            steps at (b), 60 at (a), logged every 10 steps, no validation) against
            the train section's step alone, in turn, --windows rounds; medians and
            their ratio. Not in the default set (about 6 minutes on 2 cores).
- peer:     the same training figures for PyTorch's nn.GRU (one-hot input, dropout,
            Adam, clipping, carried state), the reference peer, in fp32 and under
            torch.autocast("cpu", torch.bfloat16) (interleaved in one process), when
            the Python given by --peer-python (default: this one) can import torch.
            Not in the default set; run it with train to compare in one run.
- precision: trains GRU 2x256, seq 64, batch 64, lr 2e-3 for --steps steps on
            --data (its last 10% held out) in fp32 and in bf16, and prints both
            validation losses (each model read in fp32; the bf16 one also in bf16)
            and their difference. Not in the default set (about 15 minutes on 2 cores).
- quality:  the README's ten-minute recipe: runs `rnn_train.py --preset quality`
            (or --train-flags) on --data, a run folder in a temporary folder, and
            prints its validation curve against the wall time of the whole command
            (TensorFlow's import and the validations included): the loss at 2, 5,
            10 (30, 60...) minutes, the best and the final, and the training chars/s. Not
            in the default set (the run's --max-time, 10 minutes by default).
- grid:     the quality section's command (or several, --grid-flags) on each text of
            --grid-data for each --max-time of --grid-times, optionally on fewer
            cores (--grid-cpus, through taskset): one table row a run, with the
            recipe's choice, the steps, the best and final validation loss, the
            loss of the run's best/ on the same 500,000 held-out characters for
            every command (each run validates on its own --val-chars), the
            share of the wall time spent validating, the chars/s and the load
            average. Not in the default set (the sum of its budgets; docs/recipe.md).
- generate: batch-1 generation chars/s of a GRU 3x512 from the compiled loop and,
            as a baseline, from one tf.function call per character; the time
            from launching `rnn_play.py` to its first character, TensorFlow import
            included; and the bound for batch 1: a character must read every
            weight matrix once, so memory bandwidth, not FLOPs, sets its speed.
- distribute: the cost of --distribute mirrored: training chars/s at (b) on one device
            and as two replicas on two logical CPU devices of this machine, in
            one process, windows interleaved, with the load average. The two
            replicas do the work of the one device's two row groups, plus the
            all-reduce and the gathered state: the ratio is the overhead of
            tf.distribute, not a speed-up. Not in the default set.
- gpu:      on a machine with NVIDIA GPUs, checks in at most 8 minutes what had run
            only on CPUs: each cell on the stock layers (cuDNN) in fp32, bf16 and
            fp16; rnn_train.py there, --resume, the checkpoint played and resumed on
            the CPU's fused kernels and back; generation; --distribute mirrored
            over every GPU and over one; (a) and (b)'s training speed against
            PyTorch's cuDNN nn.GRU when --peer-python has torch with CUDA. One
            table; exit code 1 when a check fails. Without a GPU, one line, exit
            code 0. Not in the default set.
- web:      the page of rnn_play.py --export-web in headless Chromium: batch-1
            chars/s of a GRU 2x512 with embedding 64 (--preset quality's shape) and
            the default 3x512 (random weights), the page's size per weight storage
            (float32, float16, int8), the time from opening the page to its model
            being ready and from Generate to the first character; and, for a GRU 2x128
            trained for 300 steps on --data, the page's loss on 30,000
            held-out characters with each storage next to Python's on the same
            characters. Not in the default set (needs chromium and chromium-driver).

Throughput on a shared 2-core machine is noisy: each figure is the median of
several windows after a warm-up, and ratios are best compared within one run.
"""

import argparse
import os
import sys

from bench import generate, gpu, quality, text, train, web
from bench.common import CONFIGS, measure
from charrnn.config import IMPLEMENTATIONS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # children import TensorFlow through tf_setup

SECTIONS = ("text", "corpus", "memory", "matmul", "train", "loop", "peer", "generate", "precision", "quality", "distribute",
            "gpu", "web", "grid")
DEFAULT_SECTIONS = ["text", "matmul", "train", "generate"]
MODULES = (text, train, generate, quality, web, gpu)  # where the sections' child_* and report_* live


def section_function(kind, name):
    """`<kind>_<name>` (child_train, report_web...) from the bench module that defines it."""
    return next(getattr(m, f"{kind}_{name}") for m in MODULES if hasattr(m, f"{kind}_{name}"))


def make_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"what to measure, any of {', '.join(SECTIONS)}; corpus and memory write large files, peer "
                        f"needs PyTorch, distribute measures tf.distribute's cost and gpu checks GPUs, so they run only when named (default: {' '.join(DEFAULT_SECTIONS)})")
    p.add_argument("--seconds", type=float, default=10, metavar="SECONDS",
                   help="length of each measuring window: longer windows average out a busy machine "
                        "(default: %(default)s)")
    p.add_argument("--windows", type=int, default=5, metavar="N",
                   help="windows per figure; the median is reported, so one disturbed window does not "
                        "move it (default: %(default)s)")
    p.add_argument("--implementation", default="auto", choices=IMPLEMENTATIONS,
                   help="recurrent kernels for the training figures, as rnn_train.py's flag; the stock "
                        "Keras layers are always measured too, as the baseline (default: %(default)s)")
    p.add_argument("--peer-python", default=sys.executable, metavar="PYTHON",
                   help="a Python that can import torch, for the peer section (default: this Python)")
    p.add_argument("--precision", default="fp32,bf16", metavar="LIST",
                   help="precisions of the training figures, comma-separated, measured in turn in one process "
                        "(default: %(default)s)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="the text of the precision and quality sections (default: the Shakespeare corpus)")
    p.add_argument("--train-flags", default="--preset quality", metavar="FLAGS",
                   help="rnn_train.py's flags for the quality section, one quoted string; --data, --run "
                        "and the folders are added (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=500, metavar="MB",
                   help="size of the large text of the memory section (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1500, metavar="N",
                   help="training steps of each precision run: enough to compare fp32 and bf16 (default: %(default)s)")
    p.add_argument("--grid-data", nargs="+", default=None, metavar="PATH",
                   help="the texts of the grid section (default: the Shakespeare corpus)")
    p.add_argument("--grid-times", nargs="+", default=["2m", "10m"], metavar="DURATION",
                   help="the --max-time budgets of the grid section (default: 2m 10m)")
    p.add_argument("--grid-flags", nargs="+", default=["--preset quality"], metavar="FLAGS",
                   help="rnn_train.py commands of the grid section, each one quoted string; --max-time, --data, "
                        "--run and the folders are added (default: --preset quality)")
    p.add_argument("--grid-cpus", default="", metavar="LIST",
                   help="run the grid's commands under taskset -c LIST, e.g. 0 for one core: a slower machine "
                        "(default: every core)")
    # What the parent passes to each measuring process: not for the command line.
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", default="a", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    return p


def main():
    p = make_parser()
    args = p.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    args.sections = args.sections or DEFAULT_SECTIONS
    args.trained = {}  # (config, precision): training chars/s, from train, for peer
    if not set(args.precision.split(",")) <= {"fp32", "bf16"}:
        p.error(f"--precision takes fp32 and bf16, comma-separated (got {args.precision}); fp16 is for GPUs")
    if args.child:
        measure(args, section_function("child", args.child))
        return
    if args.sections != ["gpu"]:  # gpu prints its own table, or its one line without a GPU
        print(f"machine: {os.cpu_count()} CPUs; each figure the median of {args.windows} windows of {args.seconds:g} s")
    matmul = {}  # GFLOP/s by precision: the FLOP bounds of train and peer
    for name in SECTIONS:
        if name == "matmul" and {"matmul", "train", "peer"} & set(args.sections):
            matmul = train.report_matmul(args)
        elif name in args.sections:
            section_function("report", name)(args, matmul)


if __name__ == "__main__":
    main()
