"""Speed and memory figures, printed; each measurement runs in its own process.

    python3 benchmark.py                  # everything (about 8 minutes on 2 cores)
    python3 benchmark.py text train       # some sections: text matmul train generate (corpus memory peer precision quality distribute grid)
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
import contextlib
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.config import IMPLEMENTATIONS
from charrnn.text import find_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # children import TensorFlow through tf_setup

CONFIGS = {  # name: (model kwargs, batch, seqlen)
    "a": (dict(cell="gru", layers=3, units=512), 200, 30),
    "b": (dict(cell="gru", layers=2, units=256), 64, 64),
}
VOCAB = 98  # the Shakespeare corpus's vocabulary size with the unknown symbol
SECTIONS = ("text", "corpus", "memory", "matmul", "train", "peer", "generate", "precision", "quality", "distribute",
            "gpu", "web", "grid")
DEFAULT_SECTIONS = ["text", "matmul", "train", "generate"]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def windows(fn, seconds, count):
    """Run fn() repeatedly; return per-window rates (fn returns units done)."""
    rates = []
    for _ in range(count):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += fn()
        rates.append(done / (time.perf_counter() - start))
    return rates


# ---------------------------------------------------------------- children

def child_text(args):
    import numpy as np
    import txt_utils
    words = "".join(chr(c) for c in range(32, 127)) + "\n"
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(words), 1 << 20)) * 100  # 100 MiB of ASCII
    vocab = txt_utils.Vocabulary.from_text(words)
    mb = len(text) / 1e6
    enc = [mb / timed(lambda: vocab.encode(text)) for _ in range(3)]
    codes = vocab.encode(text)
    dec = [mb / timed(lambda: vocab.decode(codes)) for _ in range(3)]
    return {"encode_mb_s": statistics.median(enc), "decode_mb_s": statistics.median(dec),
            "peak_mb": peak_rss_mb()}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child_corpus(args):
    import txt_utils
    start = time.perf_counter()
    corpus = txt_utils.read_corpus(os.path.join(args.tmp, "*.txt"), validation="none")
    seconds = time.perf_counter() - start
    return {"chars": len(corpus.codes), "bytes": corpus.codes.nbytes, "seconds": seconds, "peak_mb": peak_rss_mb()}


def write_ascii_file(path, megabytes):
    import numpy as np
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ,.;:!?'ABCDEFGHIJKLMNOPQRSTUVWXYZ\n", np.uint8)
    block = alphabet[np.random.default_rng(0).integers(0, len(alphabet), 1 << 20)].tobytes()  # 1 MiB
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(block)


MATMUL_SHAPES = ((200, 512, 1536), (6000, 512, 1536), (100, 512, 512))  # [M, K] x [K, N] at (a)


def child_matmul(args):
    import numpy as np
    import tensorflow as tf
    n = 4096
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n ** 3
    np_rate = max(flops / timed(lambda: a @ a) for _ in range(7))  # the best of several: a bound
    rates = {"numpy_gflops": np_rate / 1e9}
    for name, dtype in (("tf", tf.float32), ("tf_bf16", tf.bfloat16)):
        ta = tf.cast(a, dtype)
        rates[f"{name}_gflops"] = max(flops / timed(lambda: tf.matmul(ta, ta).numpy()) for _ in range(7)) / 1e9
    # The model's shapes, fp32 and bf16 in turn: the median of several timed batches each.
    for m, k, n in MATMUL_SHAPES:
        x, w = tf.random.normal([m, k]), tf.random.normal([k, n])
        reps = max(3, int(1e9 / (2 * m * k * n)))
        pairs = {dtype: (tf.cast(x, dtype), tf.cast(w, dtype)) for dtype in (tf.float32, tf.bfloat16)}
        times = {dtype: [] for dtype in pairs}
        for _ in range(7):
            for dtype, (xd, wd) in pairs.items():
                start = time.perf_counter()
                for _ in range(reps):
                    y = tf.matmul(xd, wd)
                y.numpy()
                times[dtype].append((time.perf_counter() - start) / reps)
        rates[f"{m}x{k}x{n}"] = [2 * m * k * n / statistics.median(times[d]) / 1e9 for d in pairs]
    return rates


def child_train(args):
    import dataclasses

    import numpy as np
    from charrnn.config import TrainConfig
    from charrnn.trainer import Trainer
    kwargs, batch, seqlen = CONFIGS[args.config]
    cfg = TrainConfig(**kwargs, batch_size=batch, seqlen=seqlen, implementation=args.implementation)
    data = np.random.default_rng(0).integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)

    def make_step(precision):
        trainer = Trainer(cfg.model_config(VOCAB), dataclasses.replace(cfg, precision=precision))  # rnn_train.py's
        i = iter(range(1 << 60))

        def one_step():
            d = data[next(i) % len(data)]
            trainer.train_step(d[:, :-1], d[:, 1:])
            return batch * seqlen

        for _ in range(3):
            one_step()  # trace and warm up
        return one_step

    return {**interleaved({p: make_step(p) for p in args.precision.split(",")}, args), "peak_mb": peak_rss_mb()}


def interleaved(steps, args):
    """{name: figures} of several step functions, measured window by window in turn."""
    rates = {name: [] for name in steps}
    for _ in range(args.windows):
        for name, step in steps.items():
            rates[name] += windows(step, args.seconds, 1)
    return {name: {"chars_s": statistics.median(r), "min": min(r), "max": max(r)} for name, r in rates.items()}


def child_distribute(args):
    import numpy as np
    from charrnn import distribute
    from charrnn.config import TrainConfig
    from charrnn.trainer import Trainer
    kwargs, batch, seqlen = CONFIGS["b"]
    cfg = TrainConfig(**kwargs, batch_size=batch, seqlen=seqlen, implementation="fused", precision="fp32")
    strategy = distribute.make_strategy("mirrored")

    def build(scope):
        with scope:
            return Trainer(cfg.model_config(VOCAB), cfg)  # rnn_train.py's setup, its step per replica in a scope

    steps = {"one": build(distribute.scope(None)), "two": build(strategy.scope())}
    data = np.random.default_rng(0).integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)
    i = iter(range(1 << 60))

    def one_step(trainer):
        d = data[next(i) % len(data)]
        trainer.train_step(d[:, :-1], d[:, 1:])
        return batch * seqlen

    for step in steps.values():
        for _ in range(3):
            one_step(step)  # trace and warm up
    rates = {name: [] for name in steps}
    for _ in range(args.windows):  # interleaved: both see the same load
        for name, step in steps.items():
            rates[name] += windows(lambda: one_step(step), args.seconds, 1)
    return {"replicas": strategy.num_replicas_in_sync, "load": os.getloadavg(),
            **{name: statistics.median(r) for name, r in rates.items()},
            **{f"{name}_all": r for name, r in rates.items()}}


def train_flops_per_char(name):
    """FLOPs of one training step per character at config `name` (3x the forward's matmuls)."""
    from charrnn.config import ModelConfig
    return 3 * ModelConfig(vocab_size=VOCAB, **CONFIGS[name][0]).flops_per_char()


def child_peer(args):
    import contextlib
    import torch
    import torch.nn.functional as F
    kwargs, batch, seqlen = CONFIGS[args.config]
    layers, units = kwargs["layers"], kwargs["units"]
    torch.manual_seed(0)
    device = args.device  # "cpu", or "cuda" for the gpu section
    data = torch.randint(0, VOCAB, (16, seqlen + 1, batch), device=device)

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(VOCAB, units, layers, dropout=0.2)
            self.dropout, self.readout = torch.nn.Dropout(0.2), torch.nn.Linear(units, VOCAB)

        def forward(self, ids, h):  # ids [T, B]
            y, h = self.gru(F.one_hot(ids, VOCAB).float(), h)
            return self.readout(self.dropout(y)), h

    def make_step(precision):
        model = Peer().to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        state = [torch.zeros(layers, batch, units, device=device), 0]

        def one_step():
            d = data[state[1] % len(data)]
            with (torch.autocast(device, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
                logits, h = model(d[:-1], state[0])
                loss = F.cross_entropy(logits.reshape(-1, VOCAB), d[1:].reshape(-1))
            state[0], state[1] = h.detach().float(), state[1] + 1  # the carried state stays fp32
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            float(loss)
            return batch * seqlen

        for _ in range(3):
            one_step()
        return one_step

    steps = {p: make_step(p) for p in args.precision.split(",") if p in ("fp32", "bf16")}
    return {**interleaved(steps, args), "version": torch.__version__, "threads": torch.get_num_threads(),
            "peak_mb": peak_rss_mb()}


QUALITY = dict(cell="gru", layers=2, units=256, embedding=0, seqlen=64, batch_size=64, lr=2e-3)


def child_precision(args):
    """Train QUALITY on --data in one precision; the validation loss of the result."""
    import contextlib
    import io
    from charrnn import steps, training
    import txt_utils
    from charrnn.config import TrainConfig
    from charrnn.model import CharRNN
    from charrnn.catalog import load_for_generation
    low = args.precision
    cfg = TrainConfig(data=[args.data], validation="tail", max_steps=args.steps, val_every=args.steps,
                      sample_every=args.steps + 1, checkpoint_every=args.steps, log_every=args.steps,
                      checkpoint_dir=os.path.join(args.tmp, "ck"), log_dir=os.path.join(args.tmp, "log"),
                      run=low, precision=low, **QUALITY)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        training.train(cfg)
    seconds = time.perf_counter() - start
    # The final weights, read in fp32 (as rnn_play.py reads them) and in the run's precision.
    model, vocab, _, _ = load_for_generation(low, cfg.checkpoint_dir)
    valid = txt_utils.read_corpus(cfg.data, vocab=vocab, validation=cfg.validation).valid
    losses = {"fp32": steps.make_validate(model, cfg.seqlen)(valid)[0]}
    if low != "fp32":
        twin = CharRNN(model.config, "fused", precision=low)
        for name, variable in twin.named_variables().items():
            variable.assign(model.named_variables()[name])
        losses[low] = steps.make_validate(twin, cfg.seqlen)(valid)[0]
    return {"losses": losses, "seconds": seconds, "chars": len(valid)}


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


def train_command(data, flags, prefix=()):
    """Run `rnn_train.py FLAGS --data DATA` in a temporary folder (after the command
    prefix, e.g. taskset's). Returns its validation curve [(seconds since the start,
    step, loss)], its wall seconds, the median training chars/s, its new-run line and
    --preset quality's recipe line, the process's peak memory (MB) and the seconds each
    validation took (from the last training event before it to the validation's event)."""
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        command = [*prefix, sys.executable, os.path.join(here, "rnn_train.py"), *shlex.split(flags), "--data", data,
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
    points = [(wall - start, step, loss) for wall, step, loss in curve["validation"]]
    validation_seconds = [wall - max((w for w, s in curve["train"] if s <= step and w <= wall), default=start)
                          for wall, step, _ in curve["validation"]]
    return dict(points=points, seconds=seconds, chars_s=statistics.median(curve["chars_s"] or [0]),
                new_run=first_line(stderr, "new run"), recipe=first_line(stderr, "recipe: "),
                peak_mb=usage.ru_maxrss / 1024, validation_seconds=validation_seconds)


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


def child_generate(args):
    import tensorflow as tf
    from charrnn import checkpoints
    from charrnn import runs
    from charrnn.config import ModelConfig, SamplingConfig, TrainConfig
    from charrnn.model import CharRNN
    from charrnn.sampling import Generator
    from txt_utils import Vocabulary
    vocab = Vocabulary([chr(c) for c in range(32, 32 + VOCAB - 2)] + ["\n"])
    model = CharRNN(ModelConfig(vocab_size=len(vocab), **CONFIGS["a"][0]))
    model(tf.zeros([1, 1], tf.int32))
    # A run directory holding this (untrained) model, for the time-to-first-character test.
    run = os.path.join(args.tmp, "bench")
    os.makedirs(run, exist_ok=True)
    runs.Run(Path(run), Path(args.tmp, "log"), TrainConfig(**CONFIGS["a"][0])).save_files(model.config, vocab, [])
    checkpoints.Manager(checkpoints.weights_checkpoint(model), run, keep=1).save(0)
    generator = Generator(model, vocab, SamplingConfig(seed=0))
    start = time.perf_counter()
    next(generator.stream(length=1))
    compile_s = time.perf_counter() - start
    stream = generator.stream(length=0)
    rates = windows(lambda: next(stream).shape[1], args.seconds, args.windows)

    # The baseline the compiled loop replaces: one tf.function call per character.
    from charrnn.sampling import pick
    config = SamplingConfig(seed=0)

    @tf.function
    def one_char(token, states, position):
        logits, states = model(token[:, None], states)
        return pick(logits[:, 0], config, tf.stack([tf.constant(0, tf.int64), position]), banned=0), states

    state = [tf.constant([1]), model.initial_states(1), 0]

    def per_char():
        state[0], state[1] = one_char(state[0], state[1], tf.constant(state[2], tf.int64))
        state[2] += 1
        int(state[0][0])  # the character must reach Python, as when printing it
        return 1

    per_char()
    baseline = windows(per_char, args.seconds / 2, 3)
    bound, megabytes = streaming_bound(model, args.seconds / 2)
    return {"chars_s": statistics.median(rates), "min": min(rates), "max": max(rates), "compile_s": compile_s,
            "per_char_s": statistics.median(baseline), "bound_chars_s": bound, "weights_mb": megabytes}


def streaming_bound(model, seconds, steps=500):
    """The generation speed if a character cost nothing but reading the model's
    matrices once: batch-1 matvecs over the same weights (a row gather replaces the
    one-hot layer's kernel), chained and compiled like the generation loop.
    Returns (chars/s, megabytes read per character)."""
    import tensorflow as tf
    rnns = model.rnns
    matrices = ([r.recurrent_kernel for r in rnns] + [r.kernel for r in rnns if not r.one_hot]
                + [model.readout.kernel])
    matrices = [tf.convert_to_tensor(m) for m in matrices]

    @tf.function(jit_compile=True, autograph=False)
    def chain(h):
        def body(i, h):
            for m in matrices:
                y = tf.matmul(h[:, :m.shape[0]], m)
                h = y[:, :h.shape[1]] if y.shape[1] >= h.shape[1] else h + y[:, :1]
            return i + 1, h
        return tf.while_loop(lambda i, h: i < steps, body, (tf.constant(0), h))[1]

    h = tf.random.normal([1, model.config.units])

    def run():
        chain(h).numpy()
        return steps

    run()
    rates = windows(run, seconds, 3)
    return statistics.median(rates), sum(m.shape.num_elements() * 4 for m in matrices) / 1e6


def first_char_seconds(checkpoint_dir):
    """Wall time from launching rnn_play.py to reading its first character."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "rnn_play.py", "bench", "--checkpoint-dir", checkpoint_dir,
                             "-n", "1000", "--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    proc.stdout.read()
    proc.wait()
    return elapsed


WEB_SHAPES = {"2x512, embedding 64": dict(layers=2, units=512, embedding=64), "3x512": dict(layers=3, units=512)}
WEB_LOSS_CHARS = 30_000
WEB_TRAIN_STEPS = 300  # a model that writes words, trained in a minute or two


def child_web(args):
    """The exported page in headless Chromium: speed, sizes, first character, loss per storage."""
    from charrnn import web
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from txt_utils import Vocabulary
    browser = web.open_chromium(os.path.join(args.tmp, "profile"))
    browser.set_script_timeout(args.seconds * 3 + 60)
    try:
        vocab = Vocabulary([chr(c) for c in range(32, 32 + VOCAB - 2)] + ["\n"])
        out = {"speed": {}, "sizes": {}, "ready_ms": {}, "first_ms": {}}
        info = {"name": "bench", "checkpoint": "bench/ckpt-0", "step": 0, "best_validation_loss": None}
        for name, shape in WEB_SHAPES.items():
            model = CharRNN(ModelConfig(vocab_size=len(vocab), **shape), "fused")
            for storage in web.STORAGE:
                folder = web.write_page(model, vocab, info, os.path.join(args.tmp, f"{name}-{storage}"), storage)
                out["sizes"][f"{name} {storage}"] = [(folder / f).stat().st_size for f in ("weights.bin", "index.html")]
            ready, first = web_first_character(browser, os.path.join(args.tmp, f"{name}-float32"))
            out["ready_ms"][name], out["first_ms"][name] = ready, first
            out["engine"] = browser.execute_script("return model.engine")
            out["speed"][name] = [browser.execute_script(WEB_WINDOW, args.seconds) for _ in range(args.windows)]
        out["loss"] = web_losses(args, browser)
        out["browser"] = browser.capabilities.get("browserVersion")
        return out
    finally:
        browser.quit()


WEB_WINDOW = """const seconds = arguments[0], start = performance.now(); let made = 0;
for (const ch of model.stream({prime: "\\n", length: 0, seed: 1})) {
  if (++made % 64 === 0 && performance.now() - start > seconds * 1000) break;
}
return made / ((performance.now() - start) / 1000);"""


def web_first_character(browser, folder):
    """(ms from opening the page to its model being ready, ms from Generate to the first character)."""
    browser.get(Path(folder, "index.html").as_uri())
    browser.find_element("id", "generate").click()
    while browser.execute_script("return window.firstCharacterMs") is None:
        time.sleep(0.01)
    first = browser.execute_script("document.getElementById('stop').click(); return window.firstCharacterMs")
    return browser.execute_script("return window.pageReadyMs"), first


def web_losses(args, browser):
    """A GRU 2x128 trained briefly on --data; its loss on held-out characters, in the page for each
    storage and in Python, one sequence from a zero state each."""
    import contextlib
    import io
    import numpy as np
    import tensorflow as tf
    from charrnn import training, web
    from charrnn.config import TrainConfig
    from charrnn.catalog import load_for_generation
    import txt_utils
    steps = WEB_TRAIN_STEPS
    cfg = TrainConfig(data=[args.data], validation="tail", layers=2, units=128, seqlen=64, batch_size=32, lr=3e-3,
                      dropout=0.0, max_steps=steps, val_every=steps, sample_every=steps + 1, checkpoint_every=steps,
                      log_every=steps, checkpoint_dir=os.path.join(args.tmp, "ck"),
                      log_dir=os.path.join(args.tmp, "log"), run="web", precision="fp32")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        training.train(cfg)
    model, vocab, run_dir, prefix = load_for_generation("web", cfg.checkpoint_dir)
    ids = txt_utils.read_corpus(cfg.data, vocab=vocab, validation="tail").valid[:WEB_LOSS_CHARS + 1].astype(np.int32)
    text, states, total = vocab.decode(ids), None, 0.0
    chunk_loss = tf.function(lambda x, y, states: (lambda logits, states: (tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)), states))(*model(x, states)))
    for start in range(0, len(ids) - 1, 100):  # one sequence, the state carried from chunk to chunk
        chunk = ids[start:start + 101][None]
        loss, states = chunk_loss(tf.constant(chunk[:, :-1]), tf.constant(chunk[:, 1:]),
                                  states or model.initial_states(1))
        total += float(loss)
    losses = {"python": total / (len(ids) - 1), "chars": len(ids) - 1, "steps": steps}
    for storage in web.STORAGE:
        folder = web.export_web(model, vocab, run_dir, prefix, os.path.join(args.tmp, f"loss-{storage}"), storage)
        browser.get(Path(folder, "index.html").as_uri())
        losses[storage] = browser.execute_script("return model.loss(arguments[0])", text)
    return losses


# ---------------------------------------------------------------- parent

def run_child(kind, python=sys.executable, **kw):
    cmd = [python, __file__, "--child", kind] + [f"--{k}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"benchmark child {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        from charrnn import tf_setup
        if args.child in ("train", "precision", "distribute"):
            tf_setup.training_threads(args.implementation)  # rnn_train.py's thread settings
        if args.child not in ("text", "corpus", "peer"):  # those run without TensorFlow
            with tf_setup.starting_tensorflow() as tf:
                if args.child == "distribute":  # two logical CPU devices, before TensorFlow starts
                    cpu = tf.config.list_physical_devices("CPU")[0]
                    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        print(json.dumps(globals()[f"child_{args.child}"](args)))
        return
    if args.sections != ["gpu"]:  # gpu prints its own table, or its one line without a GPU
        print(f"machine: {os.cpu_count()} CPUs; each figure the median of {args.windows} windows of {args.seconds:g} s")
    matmul = {}  # GFLOP/s by precision: the FLOP bounds of train and peer
    for name in SECTIONS:
        if name == "matmul" and {"matmul", "train", "peer"} & set(args.sections):
            matmul = report_matmul(args)
        elif name in args.sections:
            globals()[f"report_{name}"](args, matmul)


# ---------------------------------------------------------------- reports, one per section

def timing(args):
    return dict(seconds=args.seconds, windows=args.windows)


def text_path(args):
    """The text of the precision and quality sections: --data, or the Shakespeare corpus."""
    from charrnn.config import DEFAULT_DATA
    return os.path.abspath(os.path.expanduser(args.data)) if args.data else DEFAULT_DATA


def report_text(args, matmul):
    r = run_child("text")
    print(f"text: encode {r['encode_mb_s']:,.0f} MB/s, decode {r['decode_mb_s']:,.0f} MB/s "
          f"(100 MB ASCII, median of 3; peak {r['peak_mb']:,.0f} MB)")


def report_corpus(args, matmul):
    with tempfile.TemporaryDirectory() as tmp:
        write_ascii_file(os.path.join(tmp, "big.txt"), 1000)
        r = run_child("corpus", tmp=tmp)
    print(f"corpus: read_corpus of a {r['chars'] / 1e9:.2f} GB ASCII file in {r['seconds']:.1f} s; "
          f"its codes take {r['bytes'] / 1e6:,.0f} MB, the process peaked at {r['peak_mb']:,.0f} MB "
          f"(TensorFlow not loaded)")


def report_matmul(args):
    """Prints the matmul rates; returns the FLOP bounds' rates, {precision: GFLOP/s}."""
    m = run_child("matmul")
    matmul = {"fp32": max(m["numpy_gflops"], m["tf_gflops"]), "bf16": m["tf_bf16_gflops"]}
    print(f"matmul: 4096^3 fp32 numpy {m['numpy_gflops']:.0f} GFLOP/s, tensorflow {m['tf_gflops']:.0f} GFLOP/s; "
          f"bf16 tensorflow {m['tf_bf16_gflops']:.0f} GFLOP/s (x{m['tf_bf16_gflops'] / m['tf_gflops']:.2f})")
    print("matmul: tensorflow fp32 / bf16 GFLOP/s at the model's shapes: " + ", ".join(
        f"[{mm},{k}]x[{k},{n}] {m[f'{mm}x{k}x{n}'][0]:.0f} / {m[f'{mm}x{k}x{n}'][1]:.0f}"
        for mm, k, n in MATMUL_SHAPES))
    return matmul


def report_train(args, matmul):
    precisions = args.precision.split(",")
    for name, (kwargs, batch, seqlen) in CONFIGS.items():
        runs = [(args.implementation, args.precision)] + ([("keras", "fp32")] if args.implementation != "keras" else [])
        for implementation, precision in runs:
            r = run_child("train", config=name, implementation=implementation, precision=precision, **timing(args))
            for p in precision.split(","):
                bound = matmul[p] * 1e9 / train_flops_per_char(name)
                f = r[p]
                print(f"train ({name}) {kwargs['cell'].upper()} {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                      f"batch {batch}, {implementation} {p}: {f['chars_s']:,.0f} chars/s (min {f['min']:,.0f}, "
                      f"max {f['max']:,.0f}); {p} FLOP bound {bound:,.0f} chars/s; fraction "
                      f"{f['chars_s'] / bound:.2f}; peak memory {r['peak_mb']:,.0f} MB")
            if implementation != args.implementation:
                continue
            args.trained.update({(name, p): r[p]["chars_s"] for p in precision.split(",")})  # for peer, same run
            if len(precisions) > 1:
                print(f"train ({name}) {implementation}: " + ", ".join(
                    f"{p} x{r[p]['chars_s'] / r[precisions[0]]['chars_s']:.2f}" for p in precisions[1:])
                    + f" the speed of {precisions[0]} (interleaved in one process)")


def report_peer(args, matmul):
    precisions = args.precision.split(",")
    probe = subprocess.run([args.peer_python, "-c", "import torch"], capture_output=True)
    if probe.returncode:
        print(f"peer: skipped, {args.peer_python} cannot import torch (pass --peer-python)")
    configs = {} if probe.returncode else CONFIGS
    for name, (kwargs, batch, seqlen) in configs.items():
        r = run_child("peer", python=args.peer_python, config=name, precision=args.precision, **timing(args))
        for p in (p for p in precisions if p in r):
            bound = matmul[p] * 1e9 / train_flops_per_char(name)
            f = r[p]
            autocast = " (torch.autocast)" if p == "bf16" else ""
            print(f"peer ({name}) PyTorch {r['version']} nn.GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                  f"batch {batch}, {r['threads']} threads, {p}{autocast}: {f['chars_s']:,.0f} chars/s (min "
                  f"{f['min']:,.0f}, max {f['max']:,.0f}); fraction {f['chars_s'] / bound:.2f}; peak memory "
                  f"{r['peak_mb']:,.0f} MB")
        if "fp32" in r and "bf16" in r:
            print(f"peer ({name}): bf16 x{r['bf16']['chars_s'] / r['fp32']['chars_s']:.2f} the speed of fp32 "
                  f"(interleaved in one process)")
        ours = [f"{p} x{args.trained[name, p] / r[p]['chars_s']:.2f}" for p in precisions if (name, p) in args.trained]
        if ours:
            print(f"peer ({name}): this project's {args.implementation} training against PyTorch's in this run: "
                  + ", ".join(ours))


def report_generate(args, matmul):
    with tempfile.TemporaryDirectory() as tmp:
        r = run_child("generate", tmp=tmp, **timing(args))
        first = statistics.median(first_char_seconds(tmp) for _ in range(3))
    print(f"generate: GRU 3x512, batch 1: {r['chars_s']:,.0f} chars/s (min {r['min']:,.0f}, "
          f"max {r['max']:,.0f}; compile {r['compile_s']:.1f} s); a tf.function call per character: "
          f"{r['per_char_s']:,.0f} chars/s (x{r['chars_s'] / r['per_char_s']:.1f}); time to first "
          f"character of `rnn_play.py` incl. TensorFlow import: {first:.2f} s (median of 3)")
    bound = r["bound_chars_s"]
    print(f"generate: weight-streaming bound {bound:,.0f} chars/s (its {r['weights_mb']:.1f} MB of matrices "
          f"read once per character, {bound * r['weights_mb'] / 1e3:.0f} GB/s); fraction "
          f"{r['chars_s'] / bound:.2f}")


def report_distribute(args, matmul):
    r = run_child("distribute", **timing(args))
    kwargs, batch, seqlen = CONFIGS["b"]
    overhead_ms = (1 / r["two"] - 1 / r["one"]) * batch * seqlen * 1e3
    print(f"distribute (b) GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch {batch}: one device "
          f"{r['one']:,.0f} chars/s, mirrored over {r['replicas']} logical CPU devices {r['two']:,.0f} chars/s "
          f"(x{r['two'] / r['one']:.2f}, {overhead_ms:+.1f} ms a step); windows one "
          f"{' '.join(f'{x:,.0f}' for x in r['one_all'])}, two {' '.join(f'{x:,.0f}' for x in r['two_all'])}; "
          f"load average {' '.join(f'{x:.1f}' for x in r['load'])} on {os.cpu_count()} CPUs")


def report_precision(args, matmul):
    data = text_path(args)
    losses = {}
    for p in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_child("precision", data=data, steps=args.steps, precision=p, tmp=tmp)
        losses[p] = r["losses"]
        read = ", ".join(f"read in {q} {loss:.4f}" for q, loss in r["losses"].items())
        print(f"precision: GRU 2x256, seq 64, batch 64, lr 2e-3, {args.steps} steps trained in {p} "
              f"({r['seconds']:.0f} s): validation loss {read} nats/char ({r['chars']:,} chars)")
    difference = losses["bf16"]["fp32"] - losses["fp32"]["fp32"]
    print(f"precision: bf16 - fp32 = {difference:+.4f} nats/char (both read in fp32; the goal is |difference| "
          f"<= 0.02)")


def report_quality(args, matmul):
    data = text_path(args)
    r = train_command(data, args.train_flags)
    print(f"quality: rnn_train.py {args.train_flags} --data {data}")
    print(f"quality: {r['recipe']}\nquality: {r['new_run']}" if r["recipe"] else f"quality: {r['new_run']}")
    print("quality: validation curve (min, step, nats): " + ", ".join(
        f"{t / 60:.1f} {step} {loss:.3f}" for t, step, loss in r["points"]))
    print_quality(r["points"], r["seconds"], r["chars_s"])


def report_web(args, matmul):
    with tempfile.TemporaryDirectory() as tmp:
        r = run_child("web", tmp=tmp, data=text_path(args), **timing(args))
    print(f"web: headless Chromium {r['browser']}, the model in {r['engine']}, batch 1, random weights; load "
          f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for name, rates in r["speed"].items():
        print(f"web: GRU {name}: {statistics.median(rates):,.0f} chars/s (windows "
              f"{' '.join(f'{x:,.0f}' for x in rates)}); page open to model ready {r['ready_ms'][name]:,.0f} ms, "
              f"Generate to first character {r['first_ms'][name]:,.0f} ms")
    for name, (weights, page) in r["sizes"].items():
        print(f"web: GRU {name}: weights.bin {weights:,} bytes, index.html {page:,} bytes")
    loss = r["loss"]
    print(f"web: GRU 2x128 trained {loss['steps']} steps; loss predicting {loss['chars']:,} held-out characters, "
          f"one sequence: Python {loss['python']:.4f}, page float32 {loss['float32']:.4f}, float16 "
          f"{loss['float16']:.4f} ({loss['float16'] - loss['float32']:+.4f}), int8 {loss['int8']:.4f} "
          f"({loss['int8'] - loss['float32']:+.4f}) nats/char")


MEMORY_FLAGS = "--validation tail --layers 1 --units 32 --seqlen 100 --max-steps 20 --val-every 20 --log-every 10"


def report_memory(args, matmul):
    """The same short run on a small and a large text: what grows with the text."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for megabytes, extra in ((5, ""), (args.memory_mb, ""), (args.memory_mb, " --val-chars 0")):
            path = os.path.join(tmp, f"{megabytes}.txt")
            if not os.path.exists(path):
                write_ascii_file(path, megabytes)
            r, size = train_command(path, MEMORY_FLAGS + extra), os.path.getsize(path)
            runs.append((size, r))
            print(f"memory: rnn_train.py {MEMORY_FLAGS}{extra} on {size / 2**20:,.0f} MB of text: "
                  f"peak {r['peak_mb']:,.0f} MB, {r['seconds']:.1f} s in all, validation {r['validation_seconds'][-1]:.1f} s")
            print(f"memory:   {r['new_run'].strip()}")
    (small, s), (large, l) = runs[:2]
    print(f"memory: the peak grows by {(l['peak_mb'] - s['peak_mb']) * 2**20 / (large - small):.2f} bytes a byte of "
          f"text (the run on {small / 2**20:.0f} MB is TensorFlow and the model); validating every held-out "
          f"character moves the peak by {runs[2][1]['peak_mb'] - l['peak_mb']:+,.0f} MB")


# ---------------------------------------------------------------- gpu: the GPU path, checked

GPU_BUDGET_S = 8 * 60  # the whole check; what is left undone past it fails
GPU_CHECK_FLAGS = ("--layers 2 --units 128 --seqlen 64 --batch-size 64 --validation tail --log-every 10 "
                   "--val-every 20 --checkpoint-every 20 --sample-every 1000")


def child_gpus(args):
    import tensorflow as tf
    details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
    return {"tensorflow": tf.__version__,
            "gpus": [[d.get("device_name", "GPU"), d.get("compute_capability")] for d in details]}


def child_gpu_cells(args):
    """30 steps of each cell on the stock layers (cuDNN) in each precision, fp16 with loss scaling,
    on a text whose next character is the code after this one: {"cell precision": first and last
    loss, or the error}."""
    import keras
    import numpy as np
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.precision import LossScale
    from charrnn.steps import make_train_step
    import tensorflow as tf
    starts = np.random.default_rng(0).integers(0, VOCAB, (64, 1))
    data = ((starts + np.arange(65)) % VOCAB).astype(np.int32)  # [B, T + 1], each row counting up
    results = {}
    for cell in ("gru", "lstm", "rnn"):
        for precision in ("fp32", "bf16", "fp16"):
            try:
                keras.utils.set_random_seed(0)
                model = CharRNN(ModelConfig(vocab_size=VOCAB, cell=cell, layers=2, units=256), implementation="keras",
                                precision=precision)
                variables = list(model.named_variables().values())
                states = [tf.Variable(s, trainable=False) for s in model.initial_states(64)]
                step = make_train_step(model, keras.optimizers.Adam(3e-3), variables, states, clip_norm=5.0,
                                       loss_scale=LossScale() if precision == "fp16" else None)
                losses = [float(step(data[:, :-1], data[:, 1:])[0]) for _ in range(30)]
                results[f"{cell} {precision}"] = {"first": losses[0], "last": losses[-1]}
            except Exception as e:  # one failing combination must not hide the others
                first_line = (str(e).strip().splitlines() or [""])[0][:160]
                results[f"{cell} {precision}"] = {"error": f"{type(e).__name__}: {first_line}"}
    return results


@contextlib.contextmanager
def visible_gpus(devices):
    """CUDA_VISIBLE_DEVICES for the processes started inside: "" for none, "0" for the first."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        yield
    finally:
        if saved is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def first_gpu():
    """The first GPU this process may use, for CUDA_VISIBLE_DEVICES."""
    return (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]


def script(folder, *args):
    """Run rnn_train.py or rnn_play.py (args[0]) in folder: (stdout, stderr); its error line on failure."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, args[0]), *map(str, args[1:])], cwd=folder,
                         capture_output=True, text=True, timeout=240)
    if out.returncode:
        raise RuntimeError(f"{args[0]} exit {out.returncode}: " + (out.stderr.strip().splitlines() or [""])[-1][:200])
    return out.stdout, out.stderr


def eval_loss(stdout):
    return float(stdout.split("loss ", 1)[1].split()[0])


def gpu_end_to_end(tmp, text):
    """The user's commands on the GPU, on the CPU's fused kernels and back: (check, ok, detail)s; raises on failure."""
    flags = shlex.split(GPU_CHECK_FLAGS) + ["--data", text, "--run", "gpu"]
    _, err = script(tmp, "rnn_train.py", *flags, "--max-steps", 40)
    new_run = next((line for line in err.splitlines() if line.startswith("new run")), "")
    yield "train on the GPU (auto: stock layers)", True, "precision " + new_run.rpartition(", precision ")[2]
    script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 60)
    yield "resume on the GPU", True, "steps 40 -> 60"
    gpu_loss = eval_loss(script(tmp, "rnn_play.py", "gpu", "--eval", text)[0])
    with visible_gpus(""):
        cpu_loss = eval_loss(script(tmp, "rnn_play.py", "gpu", "--eval", text)[0])
        sample = script(tmp, "rnn_play.py", "gpu", "-n", 300, "--seed", 0)[0]
        if len(sample.strip()) < 200:
            raise RuntimeError(f"the CPU wrote {len(sample.strip())} of 300 characters")
        if abs(gpu_loss - cpu_loss) > 0.01:
            raise RuntimeError(f"--eval {gpu_loss:.4f} on the GPU, {cpu_loss:.4f} on the CPU")
        yield ("GPU checkpoint played on the CPU", True,
               f"--eval {gpu_loss:.4f} GPU, {cpu_loss:.4f} CPU; 300 chars written")
        script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 70, "--implementation", "fused")
        yield "resumed on the CPU, fused kernels", True, "steps 60 -> 70"
    script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 80)
    yield "and back on the GPU", True, "steps 70 -> 80"
    start = time.perf_counter()
    sample = script(tmp, "rnn_play.py", "gpu", "-n", 2000, "--seed", 0)[0]
    if len(sample.strip()) < 1500:
        raise RuntimeError(f"the GPU wrote {len(sample.strip())} of 2000 characters")
    seconds = time.perf_counter() - start
    yield "generate on the GPU", True, f"2,000 chars in {seconds:.1f} s, TensorFlow's start included"


def gpu_mirrored(text, gpus):
    """--distribute mirrored on one GPU against no strategy (tensorflow#40421: it can keep the GRU off
    cuDNN), and over every GPU, 64 rows each: (check, ok, detail)s."""
    flags = f"{GPU_CHECK_FLAGS} --max-steps 60"
    with visible_gpus(first_gpu()):
        plain = train_command(text, flags)["chars_s"]
        one = train_command(text, f"{flags} --distribute mirrored")["chars_s"]
    yield "--distribute mirrored on 1 GPU", True, f"{one:,.0f} chars/s, x{one / plain:.2f} the speed without it"
    if gpus > 1:
        wide = flags.replace("--batch-size 64", f"--batch-size {64 * gpus}")
        every = train_command(text, f"{wide} --distribute mirrored")["chars_s"]
        yield f"--distribute mirrored over {gpus} GPUs", True, (f"{every:,.0f} chars/s at batch {64 * gpus}: "
                                                                 f"x{every / one:.2f} the speed of 1 GPU at 64")


def gpu_speed(args):
    """Training chars/s at (a) and (b), stock layers on cuDNN, and PyTorch's cuDNN nn.GRU when importable."""
    peer = not subprocess.run([args.peer_python, "-c", "import torch; assert torch.cuda.is_available()"],
                              capture_output=True).returncode
    for name, (kwargs, batch, seqlen) in CONFIGS.items():
        ours = run_child("train", config=name, implementation="keras", precision="fp32,bf16", seconds=2, windows=3)
        shape = f"({name}) GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch {batch}"
        detail = ", ".join(f"{p} {ours[p]['chars_s']:,.0f}" for p in ("fp32", "bf16"))
        if peer:
            theirs = run_child("peer", python=args.peer_python, config=name, precision="fp32,bf16", seconds=2,
                               windows=3, device="cuda")
            detail += "; PyTorch nn.GRU " + ", ".join(f"{p} {theirs[p]['chars_s']:,.0f} (ours x"
                                                      f"{ours[p]['chars_s'] / theirs[p]['chars_s']:.2f})"
                                                      for p in ("fp32", "bf16"))
        yield f"train speed {shape}", True, detail + " chars/s" + ("" if peer else "; PyTorch with CUDA not importable")


def gpu_cells():
    """A row for each cell and precision: it must learn to count. The loss falls by 0.2 nats at least
    (measured on a CPU at 1x32, 0.5 to 1.5 nats; a step that learns nothing moves it by about 0)."""
    for combination, r in run_child("gpu_cells").items():
        learnt = "error" not in r and math.isfinite(r["last"]) and r["last"] < r["first"] - 0.2
        detail = r.get("error") or f"loss {r['first']:.3f} -> {r['last']:.3f} in 30 steps"
        yield f"stock layers, {combination}", learnt, detail


def report_gpu(args, matmul):
    """Everything that had run only on CPUs, on this machine's GPUs: one table; exit 1 if a check failed."""
    from charrnn import precision
    found = run_child("gpus")
    if not found["gpus"]:
        print(f"gpu: no NVIDIA GPU visible to TensorFlow {found['tensorflow']}; nothing measured (a GPU machine "
              f"needs `pip install tensorflow[and-cuda]=={found['tensorflow']}` and the NVIDIA driver)")
        return
    capabilities = [tuple(c) if c else None for _, c in found["gpus"]]
    rows = [("GPUs", "ok", 0.0, ", ".join(f"{n} ({'.'.join(map(str, c)) if c else '?'})" for n, c in found["gpus"])),
            ("--precision auto", "ok", 0.0, precision.resolve("auto", precision.cpu_flags(), capabilities).describe())]
    deadline = time.perf_counter() + GPU_BUDGET_S
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "text.txt")
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "walkthrough", "sonnets.txt")) as f:
            sonnet = f.read()
        with open(text, "w") as f:
            f.write(sonnet * 30)  # about 200 KB: enough batches for short runs and their validation
        stages = [("cells and precisions", gpu_cells), ("end to end", lambda: gpu_end_to_end(tmp, text)),
                  ("mirrored", lambda: gpu_mirrored(text, len(found["gpus"]))), ("speed", lambda: gpu_speed(args))]
        for stage, checks in stages:
            start = time.perf_counter()
            if start > deadline:
                rows.append((stage, "FAIL", 0.0, f"not run: the {GPU_BUDGET_S // 60}-minute budget is spent"))
                continue
            try:
                for name, ok, detail in checks():
                    rows.append((name, "ok" if ok else "FAIL", time.perf_counter() - start, detail))
                    start = time.perf_counter()
            except (Exception, SystemExit) as e:  # run_child and train_command exit on a failed child
                rows.append((stage, "FAIL", time.perf_counter() - start, str(e).strip().splitlines()[-1][:300]))
    width = max(len(r[0]) for r in rows)
    print(f"gpu: {'check':<{width}}  result  seconds  detail")
    for name, result, seconds, detail in rows:
        print(f"gpu: {name:<{width}}  {result:<6}  {seconds:7.1f}  {detail}")
    failed = [r[0] for r in rows if r[1] == "FAIL"]
    if failed:
        sys.exit(f"gpu: {len(failed)} check{'s' * (len(failed) > 1)} failed: {', '.join(failed)}")

GRID_COLUMNS = ("text", "MB", "cores", "budget", "command", "recipe's choice", "steps", "best (min)", "final",
                "final - best", "validation share", "chars/s", "load")


def report_grid(args, matmul):
    """The README's command (or --grid-flags) on each text for each budget: one table row
    a run, printed as it ends. Minutes are of the whole command's wall time."""
    texts = [os.path.abspath(os.path.expanduser(d)) for d in args.grid_data] if args.grid_data else [text_path(args)]
    prefix = ("taskset", "-c", args.grid_cpus) if args.grid_cpus else ()
    cores = f"taskset -c {args.grid_cpus}" if args.grid_cpus else str(os.cpu_count())
    print("grid: | " + " | ".join(GRID_COLUMNS) + " |\ngrid: |" + "---|" * len(GRID_COLUMNS), flush=True)
    for data in texts:
        megabytes = sum(os.path.getsize(f) for f in find_files(data)) / 1e6
        for budget in args.grid_times:
            for flags in args.grid_flags:
                r = train_command(data, f"{flags} --max-time {budget}", prefix)
                print("grid: | " + " | ".join(grid_row(r, os.path.basename(data), megabytes, cores, budget, flags))
                      + " |", flush=True)


def grid_row(r, name, megabytes, cores, budget, flags):
    choice = r["recipe"].split(": ", 2)[-1]  # "recipe: 1.0 MB, about 9 passes in 10 min: GRU ..." -> "GRU ..."
    row = [name, f"{megabytes:.1f}", cores, budget, f"`{flags}`", choice]
    if not r["points"]:
        return row + ["no validation"] + [""] * 6
    best, final = min(r["points"], key=lambda p: p[2]), r["points"][-1]
    return row + [f"{final[1]:,}", f"{best[2]:.4f} ({best[0] / 60:.1f})", f"{final[2]:.4f}",
                  f"{final[2] - best[2]:+.4f}", f"{sum(r['validation_seconds']) / r['seconds']:.1%}",
                  f"{r['chars_s']:,.0f}", f"{os.getloadavg()[0]:.1f}"]


if __name__ == "__main__":
    main()
