"""The text sections: text (encoding speed), corpus (reading 1 GB) and memory (what a
training run's peak grows by with the text)."""

import os
import statistics
import tempfile
import time

from bench.common import peak_rss_mb, run_child, timed
from bench.quality import train_command

MEMORY_FLAGS = "--validation tail --layers 1 --units 32 --seqlen 100 --max-steps 20 --val-every 20 --log-every 10"


def child_text(args):
    import numpy as np
    from charrnn.text import Vocabulary
    words = "".join(chr(c) for c in range(32, 127)) + "\n"
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(words), 1 << 20)) * 100  # 100 MiB of ASCII
    vocab = Vocabulary.from_text(words)
    mb = len(text) / 1e6
    enc = [mb / timed(lambda: vocab.encode(text)) for _ in range(3)]
    codes = vocab.encode(text)
    dec = [mb / timed(lambda: vocab.decode(codes)) for _ in range(3)]
    return {"encode_mb_s": statistics.median(enc), "decode_mb_s": statistics.median(dec),
            "peak_mb": peak_rss_mb()}


def child_corpus(args):
    from charrnn.text import read_corpus
    start = time.perf_counter()
    corpus = read_corpus(os.path.join(args.tmp, "*.txt"), validation="none")
    seconds = time.perf_counter() - start
    return {"chars": len(corpus.codes), "bytes": corpus.codes.nbytes, "seconds": seconds, "peak_mb": peak_rss_mb()}


def write_ascii_file(path, megabytes):
    import numpy as np
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ,.;:!?'ABCDEFGHIJKLMNOPQRSTUVWXYZ\n", np.uint8)
    block = alphabet[np.random.default_rng(0).integers(0, len(alphabet), 1 << 20)].tobytes()  # 1 MiB
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(block)


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
