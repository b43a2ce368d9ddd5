"""The sections that run rnn_train.py as a user would: quality (the README's command and
its validation curve), grid (that command over texts and budgets) and loop (the command's
own speed against its step's alone); train_command, which runs rnn_train.py and reads its
curve, for them and for the memory and gpu sections."""

import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import CONFIGS, ROOT, run_child, text_path
from charrnn.text import find_files, read_corpus

LOOP_STEPS = {"a": 60, "b": 300}  # a run of rnn_train.py in the loop section: about 30 s on 2 cores
GRID_COLUMNS = ("text", "MB", "cores", "budget", "command", "recipe's choice", "steps", "best (min)", "final",
                "final - best", "held-out", "validation share", "chars/s", "load")
SCORE_CHARS = 500_000  # the grid scores every run's best/ on the same held-out characters


def child_curve(args):
    """The run's curves from its TensorBoard files: validation (seconds, step, loss), chars/s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf
    from charrnn import logs

    def scalars(folder, tag):
        events = EventAccumulator(os.path.join(args.tmp, folder), size_guidance={"tensors": 0})
        events.Reload()
        if tag not in events.Tags()["tensors"]:  # a run too short to log it
            return []
        return [(e.wall_time, e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]

    speed = scalars("train", logs.CHARS_PER_S)
    return {"validation": scalars("validation", logs.LOSS), "chars_s": [value for _, _, value in speed],
            "train": [(wall, step) for wall, step, _ in speed]}


def train_command(data, flags, prefix=(), score=None):
    """Run `rnn_train.py FLAGS --data DATA` in a temporary folder (after the command
    prefix, e.g. taskset's). Returns its validation curve [(seconds since the start,
    step, loss)], its wall seconds, the median training chars/s, its new-run line and
    --preset quality's recipe line, the process's peak memory (MB), the seconds each
    validation took (from the last training event before it to the validation's event)
    and, given a text file score, `rnn_play.py --eval`'s loss of the run on it (else None).
    Each run's own validation reads at most its --val-chars, so only "score" compares
    runs of different commands."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [*prefix, sys.executable, os.path.join(ROOT, "rnn_train.py"), *shlex.split(flags), "--data", data,
                   "--run", "run", "--checkpoint-dir", os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log")]
        start = time.time()
        with open(os.path.join(tmp, "err"), "w+") as err:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=tmp)
            _, status, usage = os.wait4(process.pid, 0)  # this process's own peak, not its siblings'
            seconds = time.time() - start
            err.seek(0)
            stderr = err.read()
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"benchmark: rnn_train.py failed:\n{stderr[-2000:]}")
        curve = run_child("curve", tmp=os.path.join(tmp, "log", "run"))
        scored = score and eval_loss(prefix, os.path.join(tmp, "ck"), score)
    points = [(wall - start, step, loss) for wall, step, loss in curve["validation"]]
    validation_seconds = [wall - max((w for w, s in curve["train"] if s <= step and w <= wall), default=start)
                          for wall, step, _ in curve["validation"]]
    return dict(points=points, seconds=seconds, chars_s=statistics.median(curve["chars_s"] or [0]),
                new_run=first_line(stderr, "new run"), recipe=first_line(stderr, "recipe: "),
                peak_mb=usage.ru_maxrss / 1024, validation_seconds=validation_seconds, score=scored)


def eval_loss(prefix, checkpoints, path):
    """rnn_play.py --eval's loss (nats/char) of the run under checkpoints on the text of path."""
    command = [*prefix, sys.executable, os.path.join(ROOT, "rnn_play.py"), "run", "--checkpoint-dir", checkpoints,
               "--eval", path]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode or not done.stdout.startswith("loss "):
        sys.exit(f"benchmark: rnn_play.py --eval failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[1])


def held_out_slice(data, folder):
    """A file in folder holding the first SCORE_CHARS characters of what rnn_train.py
    holds out of data by default (text.read_corpus's split: the last files of a large
    glob, else the last 10% of the characters)."""
    corpus = read_corpus(data)
    path = os.path.join(folder, "held-out.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(corpus.vocab.decode(corpus.valid[:SCORE_CHARS]))
    return path


def first_line(text, start):
    return next((line for line in text.splitlines() if line.startswith(start)), "")


def print_quality(points, seconds, chars_s):
    def line(label, point):
        minutes, step, loss = point[0] / 60, point[1], point[2]
        return f"quality: {label}: {loss:.4f} nats/char ({loss / math.log(2):.3f} bits) at {minutes:.1f} min, step {step:,}"

    for mark in (2, 5, 10, 30, 60, 120):
        before = [p for p in points if p[0] <= mark * 60]
        if before and seconds >= mark * 60 * 0.95:
            print(line(f"at {mark} min", before[-1]))
    print(line("best", min(points, key=lambda p: p[2])))
    print(line("final", points[-1]) + f"; the command took {seconds / 60:.1f} min, training ran at "
          f"{chars_s:,.0f} chars/s (median of the logged windows)")


def report_quality(args, matmul):
    data = text_path(args)
    r = train_command(data, args.train_flags)
    print(f"quality: rnn_train.py {args.train_flags} --data {data}")
    print(f"quality: {r['recipe']}\nquality: {r['new_run']}" if r["recipe"] else f"quality: {r['new_run']}")
    print("quality: validation curve (min, step, nats): " + ", ".join(
        f"{t / 60:.1f} {step} {loss:.3f}" for t, step, loss in r["points"]))
    print_quality(r["points"], r["seconds"], r["chars_s"])


def report_grid(args, matmul):
    """The README's command (or --grid-flags) on each text for each budget: one table row
    a run, printed as it ends. Minutes are of the whole command's wall time."""
    texts = [os.path.abspath(os.path.expanduser(d)) for d in args.grid_data] if args.grid_data else [text_path(args)]
    prefix = ("taskset", "-c", args.grid_cpus) if args.grid_cpus else ()
    cores = f"taskset -c {args.grid_cpus}" if args.grid_cpus else str(os.cpu_count())
    print("grid: | " + " | ".join(GRID_COLUMNS) + " |\ngrid: |" + "---|" * len(GRID_COLUMNS), flush=True)
    for data in texts:
        megabytes = sum(os.path.getsize(f) for f in find_files(data)) / 1e6
        with tempfile.TemporaryDirectory() as tmp:
            score = held_out_slice(data, tmp)
            for budget in args.grid_times:
                for flags in args.grid_flags:
                    r = train_command(data, f"{flags} --max-time {budget}", prefix, score)
                    print("grid: | " + " | ".join(grid_row(r, os.path.basename(data), megabytes, cores, budget,
                                                           flags)) + " |", flush=True)


def grid_row(r, name, megabytes, cores, budget, flags):
    choice = r["recipe"].split(": ", 2)[-1]  # "recipe: 1.0 MB, about 9 passes in 10 min: GRU ..." -> "GRU ..."
    row = [name, f"{megabytes:.1f}", cores, budget, f"`{flags}`", choice]
    if not r["points"]:
        return row + ["no validation"] + [""] * 7
    best, final = min(r["points"], key=lambda p: p[2]), r["points"][-1]
    return row + [f"{final[1]:,}", f"{best[2]:.4f} ({best[0] / 60:.1f})", f"{final[2]:.4f}",
                  f"{final[2] - best[2]:+.4f}", "" if r["score"] is None else f"{r['score']:.4f}",
                  f"{sum(r['validation_seconds']) / r['seconds']:.1%}", f"{r['chars_s']:,.0f}", f"{os.getloadavg()[0]:.1f}"]


def report_loop(args, matmul):
    """rnn_train.py's own training chars/s against its step's alone, at (a) and (b) in the
    first --precision: in turn, --windows times, the command in a fresh process for
    LOOP_STEPS steps logged every 10 (the median of its TensorBoard windows, the first one
    tracing the step) and the train section's child (its step, --seconds windows)."""
    data, precision = text_path(args), args.precision.split(",")[0]
    for name, (kwargs, batch, seqlen) in CONFIGS.items():
        flags = (f"--cell {kwargs['cell']} --layers {kwargs['layers']} --units {kwargs['units']} --seqlen {seqlen} "
                 f"--batch-size {batch} --precision {precision} --implementation {args.implementation} "
                 f"--max-steps {LOOP_STEPS[name]} --log-every 10 --val-every 1000000 --sample-every 1000000 "
                 f"--checkpoint-every 1000000")
        command, step = [], []
        for _ in range(args.windows):
            command.append(train_command(data, flags)["chars_s"])
            step.append(run_child("train", config=name, implementation=args.implementation, precision=precision,
                                  seconds=args.seconds, windows=2)[precision]["chars_s"])
        ratio = statistics.median(command) / statistics.median(step)
        print(f"loop ({name}) {kwargs['cell'].upper()} {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch "
              f"{batch}, {precision}: rnn_train.py {statistics.median(command):,.0f} chars/s "
              f"({' '.join(f'{x:,.0f}' for x in command)}), its step alone {statistics.median(step):,.0f} "
              f"({' '.join(f'{x:,.0f}' for x in step)}): the command runs at x{ratio:.3f} of its step "
              f"(medians of {args.windows} rounds, in turn)", flush=True)
