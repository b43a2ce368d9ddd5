"""Sampling: turn logits into characters, and a compiled generation loop.

Generation runs many characters inside one XLA-compiled loop (a Python call
per character is many times slower: benchmark.py generate measures both) and hands them back in chunks, carrying the
RNN state between chunks, so text streams out without costing speed.

Randomness is stateless: the draw for position t uses the seed (S, t), so the
same checkpoint, seed and settings give the same text in every process, for
every chunk size.
"""

from dataclasses import replace

import numpy as np
import tensorflow as tf

from charrnn.config import SamplingConfig
from charrnn.model import CharRNN


def filter_logits(logits, temperature=1.0, top_k=None, top_p=1.0, banned=None):
    """Scale logits by 1/temperature and set those outside top-k / top-p to -inf.

    logits: [B, V]. banned: index never to sample (the unknown symbol).
    """
    neg_inf = tf.constant(-np.inf, logits.dtype)
    logits = logits / temperature
    if banned is not None:
        logits = tf.tensor_scatter_nd_update(
            logits, tf.stack([tf.range(tf.shape(logits)[0]), tf.fill([tf.shape(logits)[0]], banned)], 1),
            tf.fill([tf.shape(logits)[0]], neg_inf))
    if top_k:
        kth = tf.math.top_k(logits, k=min(top_k, logits.shape[-1])).values[:, -1:]  # [B, 1]
        logits = tf.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = tf.sort(logits, direction="DESCENDING")  # [B, V]
        probs = tf.nn.softmax(sorted_logits)
        # A character is kept while the probability mass before it is < p: the top one always is.
        mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
        kept = tf.reduce_sum(tf.cast(mass_before < top_p, tf.int32), axis=-1, keepdims=True)  # [B, 1]
        threshold = tf.gather(sorted_logits, kept - 1, batch_dims=1)  # [B, 1]
        logits = tf.where(logits < threshold, neg_inf, logits)
    return logits


def pick(logits, config: SamplingConfig, seed, banned=None):
    """Choose one id per row of logits [B, V] -> [B] int32."""
    if config.argmax:
        if banned is not None:
            logits = filter_logits(logits, banned=banned)
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = filter_logits(logits, config.temperature, config.top_k, config.top_p, banned)
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits); unlike
    # stateless_categorical it compiles under XLA. Filtered (-inf) logits are never drawn.
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed=seed, minval=1e-20, maxval=1.0)
    return tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1, output_type=tf.int32)


class Generator:
    """Generate text from a CharRNN, `chunk` characters per compiled call.

    The same compiled loop warms the state up on a prime: while a prime lasts,
    its next character is forced instead of sampled.

    The loop runs the fused implementation of the model, in fp32. The stock Keras
    layers use cuDNN's kernel on a GPU, which XLA cannot compile (tensorflow#99385),
    and a model training in bf16 or fp16 would gain nothing here (XLA on the CPU
    turns a bf16 matvec back into an fp32 one; DEVELOPERS.md), so such a model
    generates through a fused fp32 twin holding a copy of its weights, refreshed at
    the start of every stream(): a sample logged during training is the text
    rnn_play.py writes from that step's checkpoint.
    """

    def __init__(self, model, vocab, config: SamplingConfig, chunk=256, jit=True):
        self.source = model
        if model.implementation != "fused" or model.precision != "fp32":
            model = CharRNN(model.config, "fused", initialize=False)
        self.model, self.vocab, self.config, self.chunk = model, vocab, config.check(), chunk
        # compiled_chunk(states, token, forced, n_forced, position, seed, temperature)
        #   -> (ids [B, chunk], states, last token): the loop behind stream(), also used by export.py
        self.compiled_chunk = tf.function(self._chunk, jit_compile=jit, reduce_retracing=True, autograph=False)

    def sync_weights(self):
        """Copy the model's weights into the fused twin, if there is one."""
        if self.model is not self.source:
            weights = self.source.named_variables()
            for name, variable in self.model.named_variables().items():
                variable.assign(weights[name])

    def _chunk(self, states, token, forced, n_forced, position, seed, temperature):
        # states: list of [B, S]; token: [B] last input; forced: [B, L] prime chars, n_forced of
        # them valid; position: of the chunk's first character; seed int64, temperature float32.
        # An explicit tf.while_loop, traced without autograph: converting the model's code
        # with autograph would add about a second before the first character.
        config = replace(self.config, seed=seed, temperature=temperature)

        def body(i, token, states, out):
            logits, states = self.model(token[:, None], states, training=False)  # [B, 1, V]
            draw = tf.stack([seed, position + tf.cast(i, tf.int64)])
            sampled = pick(tf.cast(logits[:, 0], tf.float32), config, draw, banned=self.vocab.unk_index)
            token = tf.where(i < n_forced, forced[:, tf.minimum(i, self.chunk - 1)], sampled)
            return i + 1, token, states, out.write(i, token)

        out = tf.TensorArray(tf.int32, size=self.chunk)
        _, token, states, out = tf.while_loop(lambda i, *_: i < self.chunk, body,
                                              (tf.constant(0), token, states, out))
        return tf.transpose(out.stack()), states, token  # [B, L]

    def next_chunk(self, states, token, pending, position, seed, temperature):
        """The `chunk` characters from `position` on -> (ids [B, chunk], states, last token),
        forcing the prime's characters pending[position:] first: one pass of the generation
        loop, for stream() in Python and for generate() in a graph alike.

        pending: [P] int32, the prime after its first character (the same for every row).
        """
        forced = pending[position:position + self.chunk]  # [<= chunk]
        n_forced = tf.size(forced)
        forced = tf.pad(forced, [[0, self.chunk - n_forced]])
        forced = tf.reshape(tf.tile(forced, tf.shape(token)), [token.shape[0] or -1, self.chunk])  # [B, chunk]
        return self.compiled_chunk(states, token, forced, n_forced, tf.cast(position, tf.int64),
                                   tf.convert_to_tensor(seed, tf.int64), tf.convert_to_tensor(temperature, tf.float32))

    def generate(self, ids, length, seed, temperature):
        """The ids that follow the prime `ids` ([P] int32; empty: a newline), `length` of them,
        as a graph (no Python per chunk): [length] int32. What stream() yields, for the same
        seed and temperature, in one call; the exported `generate` (export.py) runs it."""
        ids = tf.cond(tf.size(ids) > 0, lambda: ids, lambda: self.vocab.encode("\n").astype(np.int32))
        pending = ids[1:]
        n_chunks = (tf.size(pending) + length + self.chunk - 1) // self.chunk

        def body(c, token, states, out):
            made, states, token = self.next_chunk(states, token, pending, c * self.chunk, seed, temperature)
            return c + 1, token, states, out.write(c, made[0])

        out = tf.TensorArray(tf.int32, size=n_chunks, element_shape=[self.chunk])
        _, _, _, out = tf.while_loop(lambda c, *_: c < n_chunks, body,
                                     (tf.constant(0), tf.reshape(ids[:1], [1]), self.model.initial_states(1), out))
        return tf.reshape(out.stack(), [-1])[tf.size(pending):tf.size(pending) + length]

    def stream(self, prime="", length=1000, samples=1, seed=None, primed=None):
        """Yield numpy arrays [samples, n] of generated ids, the prime excluded.

        length 0 streams forever; seed overrides the config's for this stream. The prime is encoded with the vocabulary
        (unknown characters map to the unknown symbol); with no prime the state
        starts from a newline, as if a new paragraph began. primed(n), if given, is
        called after each chunk that reads the prime, n its characters read so far.
        """
        self.sync_weights()
        ids = self.vocab.encode(prime or "\n").astype(np.int32)  # [P]
        token = tf.fill([samples], int(ids[0]))
        states = self.model.initial_states(samples)
        pending = ids[1:]  # prime characters forced after the first
        seed = self.config.seed if seed is None else seed
        position, produced = 0, 0
        while length == 0 or produced < length:
            out, states, token = self.next_chunk(states, token, pending, position, seed, self.config.temperature)
            n_forced = min(max(len(pending) - position, 0), self.chunk)
            position += self.chunk
            if primed is not None and n_forced:
                primed(min(position, len(pending)) + 1)
            out = out.numpy()[:, n_forced:]
            if length:
                out = out[:, :length - produced]
            produced += out.shape[1]
            if out.shape[1]:
                yield out
