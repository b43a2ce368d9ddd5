"""Start TensorFlow: thread settings first, then a quiet import.

Scripts parse and check their arguments before calling these, so `--help` and
bad flags answer at once instead of after the seconds TensorFlow takes to load.

    implementation_for(requested, gpu)   what `--implementation auto` (or another) runs
    training_threads(implementation)     thread defaults for training (before the import)
    import_tensorflow()                  import TensorFlow without its start-up chatter
    starting_tensorflow()                the same, with a `with` body that runs before TensorFlow's first op
"""

import contextlib
import os
import signal
import sys


def implementation_for(requested, gpu):
    """The model implementation that `requested` runs, "fused" or "keras": `auto`
    is the stock Keras layers (cuDNN) when a GPU is visible (`gpu` true), else
    the fused CPU kernels; "fused" and "keras" are themselves."""
    if requested != "auto":
        return requested
    return "keras" if gpu else "fused"


def training_threads(implementation):
    """Thread defaults for training with the fused CPU model.

    The fused model runs a batch of 64 rows or more as two groups of rows side by
    side (model.py), so each op gets half the cores: on 2 cores, each group's small
    matmuls run alone on a core, faster than splitting every one of them over both.
    The setting does not depend on the batch size, so a run and its resume use the
    same threads (other thread counts can change float rounding, and exact resume
    holds for the same settings). TensorFlow reads these when it starts; set the
    variables yourself to override. The stock Keras layers (`keras`) keep
    TensorFlow's defaults.
    """
    # Called before TensorFlow is imported, so no GPU is known yet: `auto` takes its CPU choice, fused.
    if implementation_for(implementation, gpu=False) == "keras":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cores // 2)))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(cores))


def import_tensorflow():
    """Import TensorFlow, hiding the C++ start-up lines it prints on stderr (CUDA
    probing, oneDNN notices) even where nothing is wrong. They are written before
    TF_CPP_MIN_LOG_LEVEL is read, so stderr points at /dev/null while TensorFlow
    loads and finds its devices. Python errors still surface: they are raised, and
    printed after stderr is restored. Returns the tensorflow module."""
    with starting_tensorflow() as tf:
        return tf


@contextlib.contextmanager
def starting_tensorflow():
    """import_tensorflow() whose `with` body runs after the import and before
    TensorFlow runs its first op, stderr still quiet. What must configure
    TensorFlow's runtime goes there: a MultiWorkerMirroredStrategy sets up
    collective ops, which TensorFlow accepts only before it starts. Yields the
    tensorflow module; once TensorFlow is imported, the body simply runs."""
    if "tensorflow" in sys.modules:
        yield sys.modules["tensorflow"]
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    # Ctrl-C during the seconds TensorFlow takes to load ends the process quietly (exit 130).
    previous = signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
        tf.config.list_physical_devices()  # device discovery logs its own warnings
        tf.get_logger().setLevel("ERROR")
        yield tf
        # The first int32 transpose logs a false "oneDNN supports DT_INT32 only on
        # platforms with AVX-512" error line, once per process: spend it here.
        tf.transpose(tf.zeros([1, 1], tf.int32))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        signal.signal(signal.SIGINT, previous)
