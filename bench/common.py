"""What every section shares: the shapes (a) and (b), the measuring windows, peak
memory, the default text, and both sides of a measuring process: run_child starts
`benchmark.py --child KIND --flag=value ...` and reads the JSON dict on the last line
of its stdout; measure is that process's side, which prints it."""

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the scripts' folder

CONFIGS = {  # name: (model kwargs, batch, seqlen)
    "a": (dict(cell="gru", layers=3, units=512), 200, 30),
    "b": (dict(cell="gru", layers=2, units=256), 64, 64),
}
VOCAB = 98  # the Shakespeare corpus's vocabulary size with the unknown symbol


def peak_rss_mb():
    """This process's peak resident memory so far, in MB (2^20 bytes)."""
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


def timed(fn):
    """Seconds one call of fn() takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timing(args):
    """--seconds and --windows, as run_child's keywords."""
    return dict(seconds=args.seconds, windows=args.windows)


def text_path(args):
    """The text of the precision and quality sections: --data, or the Shakespeare corpus."""
    from charrnn.config import DEFAULT_DATA
    return os.path.abspath(os.path.expanduser(args.data)) if args.data else DEFAULT_DATA


def run_child(kind, python=sys.executable, **kw):
    """Run child_KIND in its own process (under python) with --k=v for each keyword; its dict. Exits on failure."""
    cmd = [python, os.path.join(ROOT, "benchmark.py"), "--child", kind] + [f"--{k}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"benchmark child {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args, child):
    """The measuring process of run_child: rnn_train.py's thread settings and TensorFlow's start
    where the child needs them, then child(args)'s dict as one JSON line on stdout."""
    from charrnn import tf_setup
    if args.child in ("train", "precision", "distribute"):
        tf_setup.training_threads(args.implementation)  # rnn_train.py's thread settings
    if args.child not in ("text", "corpus", "peer"):  # those run without TensorFlow
        with tf_setup.starting_tensorflow() as tf:
            if args.child == "distribute":  # two logical CPU devices, before TensorFlow starts
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    print(json.dumps(child(args)))
