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

import shutil
from pathlib import Path

import tensorflow as tf

from charrnn import runs
from charrnn.config import SamplingConfig
from charrnn.errors import UserError
from charrnn.sampling import Generator


class ExportedGenerator(tf.Module):
    def __init__(self, model, vocab, sampling: SamplingConfig):
        super().__init__()
        self.generator = Generator(model, vocab, sampling)
        self.generator.sync_weights()
        self.model = self.generator.model  # the fused model the loop runs; tracks the weights
        encode, decode = vocab.code_point_tables()
        self.encode_table, self.decode_table = tf.constant(encode), tf.constant(decode)
        self.newline = int(vocab.encode("\n")[0])  # the start when there is no prime, as in stream()
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
        # sampling.Generator.stream() as a graph: the same compiled chunks, the same forced
        # prime, the same random draws, so the same seed gives the same text.
        chunk = self.generator.chunk
        cps = tf.strings.unicode_decode(prime, "UTF-8", errors="replace")
        ids = tf.gather(self.encode_table, tf.minimum(cps, tf.size(self.encode_table) - 1))
        ids = tf.cond(tf.size(ids) > 0, lambda: ids, lambda: tf.constant([self.newline]))
        pending = ids[1:]  # prime characters forced after the first
        n_pending = tf.size(pending)
        n_chunks = (n_pending + length + chunk - 1) // chunk
        pending = tf.pad(pending, [[0, n_chunks * chunk - n_pending]])[None]  # [1, n_chunks * chunk]

        def body(c, token, states, out):
            start = c * chunk
            forced = tf.reshape(pending[:, start:start + chunk], [1, chunk])
            n_forced = tf.clip_by_value(n_pending - start, 0, chunk)
            made, states, token = self.generator.compiled_chunk(
                states, token, forced, n_forced, tf.cast(start, tf.int64), seed, temperature)
            return c + 1, token, states, out.write(c, made[0])

        out = tf.TensorArray(tf.int32, size=n_chunks, element_shape=[chunk])
        _, _, _, out = tf.while_loop(lambda c, *_: c < n_chunks, body,
                                     (tf.constant(0), tf.reshape(ids[:1], [1]), self.model.initial_states(1), out))
        made = tf.reshape(out.stack(), [-1])[n_pending:n_pending + length]
        return {"text": tf.strings.unicode_encode(tf.gather(self.decode_table, made), "UTF-8")}


def export(model, vocab, run_dir, sampling: SamplingConfig, directory):
    """Write the SavedModel to directory, which must not exist or be empty."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--export {directory}: exists and is not an empty folder; "
                        f"name a new folder (nothing was written)")
    existed = target.exists()
    module = ExportedGenerator(model, vocab, sampling)
    try:
        tf.saved_model.save(module, str(target), signatures={
            "generate": module.generate, "step": module.step})
    except (OSError, tf.errors.OpError) as e:
        if target.exists() and not existed:  # leave nothing half-written
            shutil.rmtree(target, ignore_errors=True)
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise UserError(f"--export {directory}: cannot write ({reason.splitlines()[0]}); choose another folder") from None
    (target / "assets").mkdir(exist_ok=True)
    for name in (runs.CONFIG, runs.VOCAB):
        shutil.copy(Path(run_dir) / name, target / "assets" / name)
    return target
