"""The generate section: batch-1 generation speed, its baseline and its memory bound,
and the time from launching rnn_play.py to its first character."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import CONFIGS, VOCAB, run_child, timing, windows


def child_generate(args):
    import tensorflow as tf
    from charrnn import checkpoints
    from charrnn import runs
    from charrnn.config import ModelConfig, SamplingConfig, TrainConfig
    from charrnn.model import CharRNN
    from charrnn.sampling import Generator
    from charrnn.text import Vocabulary
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
