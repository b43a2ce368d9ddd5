"""Export a trained model as a TensorFlow SavedModel that needs none of this code.

    python3 rnn_play.py RUN --export DIR [--top-k K] [--top-p P] [--argmax]

    m = tf.saved_model.load(DIR)
    m.generate(prime=tf.constant("ROMEO:"), length=tf.constant(500),
               temperature=tf.constant(0.8), seed=tf.constant(1, tf.int64))["text"]
    m.step(ids=..., states=...)   # one or more characters in, logits and states out

`generate` takes and returns text (UTF-8 strings): the vocabulary travels
inside the graph. It runs the XLA-compiled loop of sampling.Generator, as rnn_play.py
does, so the same seed and
temperature give the same text. Top-k, top-p and argmax are fixed when exporting.
`step` is the bare model: ids [B, T] int32 and states [layers, B, S] float32
(zeros to start) in; logits [B, T, V] and the new states out. The run's
config.json and vocab.json are copied into DIR/assets for reference.
"""

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from charrnn.config import SamplingConfig
from charrnn.errors import UserError
from charrnn.run_files import CONFIG, VOCAB
from charrnn.sampling import Generator


class ExportedGenerator(tf.Module):
    def __init__(self, model, vocab, sampling: SamplingConfig):
        super().__init__()
        self.generator = Generator(model, vocab, sampling)
        self.generator.sync_weights()
        self.model = self.generator.model  # the fused model the loop runs; tracks the weights
        encode, decode = vocab.code_point_tables()
        self.encode_table, self.decode_table = tf.constant(encode), tf.constant(decode)
        layers, size = model.config.layers, model.state_sizes()[0]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="ids"),
            tf.TensorSpec([layers, None, size], tf.float32, name="states")], autograph=False)
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec([], tf.string, name="prime"), tf.TensorSpec([], tf.int32, name="length"),
            tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int64, name="seed")],
            autograph=False)

    def _step(self, ids, states):
        logits, states = self.model(ids, tf.unstack(states), training=False)
        return {"logits": logits, "states": tf.stack(states)}

    def _generate(self, prime, length, temperature, seed):
        # What rnn_play.py refuses (config.SamplingConfig.check, --length), refused here too.
        checks = [tf.debugging.assert_greater(temperature, 0.0, message="temperature must be > 0 (not NaN); "
                                                                         "export with --argmax for greedy text"),
                  tf.debugging.assert_non_negative(length, message="length must be >= 0")]
        with tf.control_dependencies(checks):
            cps = tf.strings.unicode_decode(prime, "UTF-8", errors="replace")
        ids = tf.gather(self.encode_table, tf.minimum(cps, tf.size(self.encode_table) - 1))
        made = self.generator.generate(ids, length, seed, temperature)  # sampling.Generator's loop
        return {"text": tf.strings.unicode_encode(tf.gather(self.decode_table, made), "UTF-8")}


def export(model, vocab, run_dir, sampling: SamplingConfig, directory):
    """Write the SavedModel to directory, which must not exist or be empty (rnn_play.py
    checks; a folder that is not empty fails the rename, unchanged).

    It is written into a temporary folder beside directory, then renamed into place:
    a failure (a full disk) leaves nothing behind.
    """
    target = Path(directory)
    module = ExportedGenerator(model, vocab, sampling)
    made = [p for p in reversed(target.absolute().parents) if not p.exists()]  # removed again on failure
    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
        tf.saved_model.save(module, str(partial), signatures={"generate": module.generate, "step": module.step})
        (partial / "assets").mkdir(exist_ok=True)
        for name in (CONFIG, VOCAB):
            shutil.copy(Path(run_dir) / name, partial / "assets" / name)
        os.replace(partial, target)  # also over an empty folder
    except (OSError, tf.errors.OpError) as e:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        for folder in reversed(made):  # only while empty: never what another process put there
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise _write_error(directory, e) from None
    return target


def _write_error(directory, e):
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in reason:
        return UserError(f"--export {directory}: no space left on the disk (nothing was written); free some space "
                         f"or choose a folder on another disk")
    return UserError(f"--export {directory}: cannot write ({reason.splitlines()[0]}); choose another folder "
                     f"(nothing was written)")
