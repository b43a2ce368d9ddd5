"""Speed and memory figures, printed; each measurement runs in its own process.

    python3 benchmark.py                  # everything (about 6 minutes on 2 cores)
    python3 benchmark.py text train       # some sections: text matmul train generate (corpus peer distribute)
    python3 benchmark.py train peer --peer-python ~/torch-venv/bin/python

- text:     vocabulary encoding/decoding speed on a 100 MB ASCII text.
- corpus:   reading a 1 GB ASCII file with read_corpus (two streamed passes):
            time, and the peak memory of the process (run it alone; it writes
            the file to a temporary folder).
- matmul:   the machine's fp32 matrix-multiply rate (best of numpy and TensorFlow).
- train:    training chars/s of the real training step (Adam, clipping, carried
            state) for (a) GRU 3x512, seq 30, batch 200 and (b) GRU 2x256, seq 64,
            batch 64, as a fraction of the FLOP bound = matmul rate / (3 x forward
            FLOPs per char), and the peak memory of that process; with the default
            implementation and, as a baseline, the stock Keras layers in the same
            loop, each with rnn_train.py's thread settings for it.
- peer:     the same training figures for PyTorch's nn.GRU (one-hot input, dropout,
            Adam, clipping, carried state), the reference peer, when the Python
            given by --peer-python (default: this one) can import torch. Not in the
            default set; run it with train to compare in one run.
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

Throughput on a shared 2-core machine is noisy: each figure is the median of
several windows after a warm-up, and ratios are best compared within one run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config import IMPLEMENTATIONS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # children import TensorFlow through tf_setup

CONFIGS = {  # name: (model kwargs, batch, seqlen)
    "a": (dict(cell="gru", layers=3, units=512), 200, 30),
    "b": (dict(cell="gru", layers=2, units=256), 64, 64),
}
VOCAB = 98  # the Shakespeare corpus's vocabulary size with the unknown symbol
SECTIONS = ("text", "corpus", "matmul", "train", "peer", "generate", "distribute")
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


def child_matmul(args):
    import numpy as np
    import tensorflow as tf
    n = 4096
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n ** 3
    np_rate = max(flops / timed(lambda: a @ a) for _ in range(7))  # the best of several: a bound
    ta = tf.constant(a)
    tf_rate = max(flops / timed(lambda: tf.matmul(ta, ta).numpy()) for _ in range(7))
    return {"numpy_gflops": np_rate / 1e9, "tf_gflops": tf_rate / 1e9}


def child_train(args):
    import keras
    import numpy as np
    import tensorflow as tf
    from config import ModelConfig
    from model import CharRNN
    from training import make_train_step
    kwargs, batch, seqlen = CONFIGS[args.config]
    config = ModelConfig(vocab_size=VOCAB, **kwargs)
    model = CharRNN(config, implementation=args.implementation)
    variables = list(model.named_variables().values())
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(variables)
    states = [tf.Variable(s, trainable=False) for s in model.initial_states(batch)]
    step = make_train_step(model, optimizer, variables, states, clip_norm=5.0)
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)
    i = iter(range(1 << 60))

    def one_step():
        d = data[next(i) % len(data)]
        loss, _, _ = step(d[:, :-1], d[:, 1:])
        float(loss)
        return batch * seqlen

    for _ in range(3):
        one_step()  # trace and warm up
    rates = windows(one_step, args.seconds, args.windows)
    return {"chars_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "peak_mb": peak_rss_mb()}


def child_distribute(args):
    import keras
    import numpy as np
    import tensorflow as tf
    import distribute
    from config import ModelConfig
    from model import CharRNN
    from training import make_train_step
    kwargs, batch, seqlen = CONFIGS["b"]
    config = ModelConfig(vocab_size=VOCAB, **kwargs)
    strategy = distribute.make_strategy("mirrored")

    def build(scope, make_step):
        with scope:
            model = CharRNN(config, implementation="fused")
            variables = list(model.named_variables().values())
            optimizer = keras.optimizers.Adam(1e-3)
            optimizer.build(variables)
            states = [tf.Variable(s, trainable=False) for s in model.initial_states(batch)]
            return make_step(model, optimizer, variables, states, clip_norm=5.0)

    steps = {"one": build(distribute.scope(None), make_train_step),
             "two": build(strategy.scope(), distribute.make_distributed_train_step)}
    data = np.random.default_rng(0).integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)
    i = iter(range(1 << 60))

    def one_step(step):
        d = data[next(i) % len(data)]
        loss, _, _ = step(d[:, :-1], d[:, 1:])
        float(loss)
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
    from config import ModelConfig
    return 3 * ModelConfig(vocab_size=VOCAB, **CONFIGS[name][0]).flops_per_char()


def child_peer(args):
    import torch
    import torch.nn.functional as F
    kwargs, batch, seqlen = CONFIGS[args.config]
    layers, units = kwargs["layers"], kwargs["units"]
    torch.manual_seed(0)

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(VOCAB, units, layers, dropout=0.2)
            self.dropout, self.readout = torch.nn.Dropout(0.2), torch.nn.Linear(units, VOCAB)

        def forward(self, ids, h):  # ids [T, B]
            y, h = self.gru(F.one_hot(ids, VOCAB).float(), h)
            return self.readout(self.dropout(y)), h

    model = Peer()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    data = torch.randint(0, VOCAB, (16, seqlen + 1, batch))
    state = [torch.zeros(layers, batch, units), 0]

    def one_step():
        d = data[state[1] % len(data)]
        logits, h = model(d[:-1], state[0])
        state[0], state[1] = h.detach(), state[1] + 1
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), d[1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        float(loss)
        return batch * seqlen

    for _ in range(3):
        one_step()
    rates = windows(one_step, args.seconds, args.windows)
    return {"chars_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "version": torch.__version__, "threads": torch.get_num_threads(), "peak_mb": peak_rss_mb()}


def child_generate(args):
    import tensorflow as tf
    import checkpoints
    import run as runs
    from config import ModelConfig, SamplingConfig, TrainConfig
    from model import CharRNN
    from sampling import Generator
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
    from sampling import pick
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
                   help=f"what to measure, any of {', '.join(SECTIONS)}; corpus writes a 1 GB file, peer "
                        f"needs PyTorch and distribute measures tf.distribute's cost, so they run only when named (default: {' '.join(DEFAULT_SECTIONS)})")
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
    # What the parent passes to each measuring process: not for the command line.
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", default="a", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    return p


def main():
    p = make_parser()
    args = p.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    args.sections = args.sections or DEFAULT_SECTIONS
    if args.child:
        import tf_setup
        if args.child in ("train", "distribute"):
            tf_setup.training_threads(args.implementation)  # rnn_train.py's thread settings
        if args.child not in ("text", "corpus", "peer"):  # those run without TensorFlow
            with tf_setup.starting_tensorflow() as tf:
                if args.child == "distribute":  # two logical CPU devices, before TensorFlow starts
                    cpu = tf.config.list_physical_devices("CPU")[0]
                    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        print(json.dumps(globals()[f"child_{args.child}"](args)))
        return
    timing = dict(seconds=args.seconds, windows=args.windows)
    print(f"machine: {os.cpu_count()} CPUs; each figure the median of {args.windows} windows of {args.seconds:g} s")
    if "text" in args.sections:
        r = run_child("text")
        print(f"text: encode {r['encode_mb_s']:,.0f} MB/s, decode {r['decode_mb_s']:,.0f} MB/s "
              f"(100 MB ASCII, median of 3; peak {r['peak_mb']:,.0f} MB)")
    if "corpus" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            write_ascii_file(os.path.join(tmp, "big.txt"), 1000)
            r = run_child("corpus", tmp=tmp)
        print(f"corpus: read_corpus of a {r['chars'] / 1e9:.2f} GB ASCII file in {r['seconds']:.1f} s; "
              f"its codes take {r['bytes'] / 1e6:,.0f} MB, the process peaked at {r['peak_mb']:,.0f} MB "
              f"(TensorFlow not loaded)")
    matmul = None
    if {"matmul", "train", "peer"} & set(args.sections):
        m = run_child("matmul")
        matmul = max(m["numpy_gflops"], m["tf_gflops"])
        print(f"matmul: fp32 4096^3 numpy {m['numpy_gflops']:.0f} GFLOP/s, tensorflow {m['tf_gflops']:.0f} GFLOP/s")
    if "train" in args.sections:
        implementations = [args.implementation] + (["keras"] if args.implementation != "keras" else [])
        for name, (kwargs, batch, seqlen) in CONFIGS.items():
            for implementation in implementations:
                r = run_child("train", config=name, implementation=implementation, **timing)
                bound = matmul * 1e9 / train_flops_per_char(name)
                print(f"train ({name}) {kwargs['cell'].upper()} {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                      f"batch {batch}, {implementation}: {r['chars_s']:,.0f} chars/s (min {r['min']:,.0f}, "
                      f"max {r['max']:,.0f}); FLOP bound {bound:,.0f} chars/s; fraction "
                      f"{r['chars_s'] / bound:.2f}; peak memory {r['peak_mb']:,.0f} MB")
    if "peer" in args.sections:
        probe = subprocess.run([args.peer_python, "-c", "import torch"], capture_output=True)
        if probe.returncode:
            print(f"peer: skipped, {args.peer_python} cannot import torch (pass --peer-python)")
        configs = {} if probe.returncode else CONFIGS
        for name, (kwargs, batch, seqlen) in configs.items():
            r = run_child("peer", python=args.peer_python, config=name, **timing)
            bound = matmul * 1e9 / train_flops_per_char(name)
            print(f"peer ({name}) PyTorch {r['version']} nn.GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                  f"batch {batch}, {r['threads']} threads: {r['chars_s']:,.0f} chars/s (min {r['min']:,.0f}, "
                  f"max {r['max']:,.0f}); fraction {r['chars_s'] / bound:.2f}; peak memory {r['peak_mb']:,.0f} MB")
    if "generate" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_child("generate", tmp=tmp, **timing)
            first = statistics.median(first_char_seconds(tmp) for _ in range(3))
        print(f"generate: GRU 3x512, batch 1: {r['chars_s']:,.0f} chars/s (min {r['min']:,.0f}, "
              f"max {r['max']:,.0f}; compile {r['compile_s']:.1f} s); a tf.function call per character: "
              f"{r['per_char_s']:,.0f} chars/s (x{r['chars_s'] / r['per_char_s']:.1f}); time to first "
              f"character of `rnn_play.py` incl. TensorFlow import: {first:.2f} s (median of 3)")
        bound = r["bound_chars_s"]
        print(f"generate: weight-streaming bound {bound:,.0f} chars/s (its {r['weights_mb']:.1f} MB of matrices "
              f"read once per character, {bound * r['weights_mb'] / 1e3:.0f} GB/s); fraction "
              f"{r['chars_s'] / bound:.2f}")
    if "distribute" in args.sections:
        r = run_child("distribute", **timing)
        kwargs, batch, seqlen = CONFIGS["b"]
        overhead_ms = (1 / r["two"] - 1 / r["one"]) * batch * seqlen * 1e3
        print(f"distribute (b) GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch {batch}: one device "
              f"{r['one']:,.0f} chars/s, mirrored over {r['replicas']} logical CPU devices {r['two']:,.0f} chars/s "
              f"(x{r['two'] / r['one']:.2f}, {overhead_ms:+.1f} ms a step); windows one "
              f"{' '.join(f'{x:,.0f}' for x in r['one_all'])}, two {' '.join(f'{x:,.0f}' for x in r['two_all'])}; "
              f"load average {' '.join(f'{x:.1f}' for x in r['load'])} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
