"""Import TensorFlow quietly. Scripts import this module before any other that uses TensorFlow.

TensorFlow prints start-up lines on stderr (CUDA probing, oneDNN notices) even
on a machine where nothing is wrong. They are C++ log lines written before
TF_CPP_MIN_LOG_LEVEL is read, so stderr is pointed at /dev/null while
TensorFlow loads and finds its devices. Python errors still surface: they are
raised, and printed after stderr is restored.
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_quietly():
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
        # The first int32 transpose logs a false "oneDNN supports DT_INT32 only on
        # platforms with AVX-512" error line, once per process: spend it here.
        tf.transpose(tf.zeros([1, 1], tf.int32))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        signal.signal(signal.SIGINT, previous)


_import_quietly()
