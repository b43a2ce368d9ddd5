"""The character-level RNN language model: its configuration and the Keras model.

One `CharRNN` serves training, validation and generation. The recurrent state of
every layer is passed in and returned explicitly, so the training loop can carry
it from one batch to the next and the sampler can feed one character at a time.

Two interchangeable implementations hold the same weights in Keras's layout:
- "keras": the stock `keras.layers.GRU`/`LSTM`/`SimpleRNN` (cuDNN on a GPU);
- "fused": our own CPU path. It works time-major, projects the inputs of a whole
  sequence with one matmul per layer (a row gather for one-hot input), unrolls
  the recurrence, and for the GRU writes the backward pass by hand (see
  `_gru_recurrence`). A batch of 64 rows or more runs as two independent groups
  of rows (each with its own dropout masks), which TensorFlow computes at the
  same time; rnn_train.py gives each op half the cores to match.
A model trained with one loads into the other through `named_variables()`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

CELLS = ("gru", "lstm", "rnn")
IMPLEMENTATIONS = ("auto", "fused", "keras")
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # weight blocks per cell: U·GATES columns
ROW_GROUPS, MIN_GROUP_ROWS = 2, 32  # the fused path splits a batch of 64+ rows in 2 groups


@dataclasses.dataclass
class ModelConfig:
    """Hyper-parameters of the model; saved in every checkpoint to rebuild it."""

    vocab_size: int
    cell: str = "gru"  # "gru" | "lstm" | "rnn"
    layers: int = 3
    units: int = 512
    embedding: int = 0  # 0: one-hot input (a row gather); >0: learned embedding size
    dropout: float = 0.2  # rate between layers and before the readout
    seed: int = 0  # seeds the initializers and the dropout masks

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name, low in (("vocab_size", 1), ("layers", 1), ("units", 1), ("embedding", 0), ("seed", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ValueError(f"ModelConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.cell not in CELLS:
            raise ValueError(f"ModelConfig.cell must be one of {CELLS}, got {self.cell!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig.dropout must be a rate in [0, 1), got {self.dropout!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        if "vocab_size" not in d:
            raise ValueError("ModelConfig needs vocab_size")
        return cls(**d)


def flops_per_char(config: ModelConfig) -> float:
    """Forward FLOPs per character (matmuls only); a training step costs about 3x."""
    U = config.units
    flops = 2 * U * config.vocab_size  # readout
    for layer in range(config.layers):
        I = U if layer > 0 else (config.embedding or config.vocab_size)
        flops += 2 * GATES[config.cell] * U * (I + U)
    return float(flops)


def _seeds(seed: int, n: int) -> list[int]:
    """n independent, reproducible int31 seeds derived from one."""
    return [int(s) >> 1 for s in np.random.SeedSequence(seed).generate_state(n)]


class CharRNN(keras.Model):
    """Stacked GRU/LSTM/RNN over characters, with the states in and out explicitly.

    call(ids [B, T] int, states) -> (logits [B, T, V] float32, new states), where
    states is a list with one float32 [B, S] tensor per layer (S from state_sizes()).
    """

    def __init__(self, config: ModelConfig, implementation: str = "auto", initialize: bool = True, **kwargs):
        """initialize=False fills the weights with zeros, for a model whose weights are
        restored at once: it saves the orthogonal initializers' time (a third of a
        second at 3x512) before the first generated character."""
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if implementation == "auto":
            implementation = "keras" if tf.config.list_physical_devices("GPU") else "fused"
        self.config = config
        self.implementation = implementation
        c = config
        seeds = iter(_seeds(c.seed, 3 * c.layers + 3))

        def seeded(initializer):
            return initializer if initialize else keras.initializers.Zeros()

        self.embedding = None
        if c.embedding:
            self.embedding = keras.layers.Embedding(
                c.vocab_size, c.embedding, embeddings_initializer=seeded(keras.initializers.RandomUniform(-0.05, 0.05, seed=next(seeds)))
            )
        layer_class = FusedRecurrent if implementation == "fused" else KerasRecurrent
        self.rnns = []
        for layer in range(c.layers):
            one_hot = layer == 0 and not c.embedding
            seed = (next(seeds), next(seeds))
            self.rnns.append(layer_class(c.cell, c.units, one_hot, c.vocab_size, seed=seed if initialize else None))
        # dropouts[l] acts on the output of layer l: the input of layer l+1, or of the readout.
        self.dropouts = [Dropout(c.dropout, seed=next(seeds)) for _ in range(c.layers)]
        self.readout = keras.layers.Dense(c.vocab_size, kernel_initializer=seeded(keras.initializers.GlorotUniform(seed=next(seeds))))

        # Create every variable now, so a checkpoint can be restored before any call.
        input_size = c.embedding or c.vocab_size
        if self.embedding is not None:
            self.embedding.build((None, None))
        for rnn in self.rnns:
            rnn.build((None, None, input_size))
            input_size = c.units
        self.readout.build((None, c.units))
        self.built = True

    def state_sizes(self) -> list[int]:
        size = 2 * self.config.units if self.config.cell == "lstm" else self.config.units
        return [size] * self.config.layers

    def initial_states(self, batch_size) -> list[tf.Tensor]:
        return [tf.zeros([batch_size, size]) for size in self.state_sizes()]

    def call(self, ids, states=None, training=False):
        if states is None:
            states = self.initial_states(tf.shape(ids)[0])
        groups = self._row_groups(ids.shape[0])
        if not groups:
            return self._call_rows(ids, states, training)
        # Independent groups of rows, each through the whole model: TF runs them
        # side by side on different cores, with no copies between the layers.
        results = [
            self._call_rows(ids_g, list(states_g), training)
            for ids_g, *states_g in zip(tf.split(ids, groups), *(tf.split(s, groups) for s in states))
        ]
        logits = tf.concat([logits_g for logits_g, _ in results], axis=0)
        new_states = [tf.concat(layer_states, axis=0) for layer_states in zip(*(states_g for _, states_g in results))]
        return logits, new_states

    def _row_groups(self, batch):
        """Sizes of the row groups of the fused CPU path, or None for one group."""
        count = min(ROW_GROUPS, (batch or 0) // MIN_GROUP_ROWS)
        if self.implementation != "fused" or count < 2:
            return None
        return [batch // count + (i < batch % count) for i in range(count)]

    def _call_rows(self, ids, states, training):
        time_major = self.implementation == "fused"
        x = tf.transpose(ids) if time_major else ids  # [T, B] or [B, T]
        if self.embedding is not None:
            x = self.embedding(x)  # [..., E]
        new_states = []
        for rnn, dropout, state in zip(self.rnns, self.dropouts, states):
            x, state = rnn(x, state, training=training)  # [..., U], [B, S]
            x = dropout(x, training=training)
            new_states.append(state)
        logits = self.readout(x)  # [..., V]
        if time_major:
            logits = tf.transpose(logits, [1, 0, 2])  # [B, T, V]
        return logits, new_states

    def named_variables(self) -> dict[str, tf.Variable]:
        """The weights under names that do not depend on the implementation."""
        named = {}
        if self.embedding is not None:
            named["embedding/embeddings"] = self.embedding.embeddings
        for layer, rnn in enumerate(self.rnns):
            for name in ("kernel", "recurrent_kernel", "bias"):
                named[f"rnn_{layer}/{name}"] = getattr(rnn.cell_weights, name)
        named["readout/kernel"] = self.readout.kernel
        named["readout/bias"] = self.readout.bias
        return {name: v.value for name, v in named.items()}

    def rng_variables(self) -> dict[str, tf.Variable]:
        """The dropout random-generator states, needed to resume a run exactly."""
        return {
            f"dropout_{layer}/seed_state": d.seed_generator.state.value
            for layer, d in enumerate(self.dropouts)
            if getattr(d, "seed_generator", None) is not None
        }


class Dropout(keras.layers.Dropout):
    """Keras's Dropout with a cheaper mask: 16 random bits decide each element (the
    rate is rounded to a multiple of 1/65536), so it draws half the random numbers
    Keras's does and compares integers. Keras's seed generator drives it, so the
    masks are reproducible and a checkpointed run resumes exactly."""

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        dropped = round(self.rate * 65536)  # of 65536 values of the 16 bits
        n = tf.size(inputs)
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 1), tf.int32)
        bits = tf.random.stateless_uniform([(n + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:n]
        keep = tf.reshape(bits, tf.shape(inputs)) >= dropped
        return tf.where(keep, inputs * (65536 / (65536 - dropped)), tf.zeros_like(inputs))


def _cell_initializers(cell: str, units: int, seed: tuple[int, int] | None) -> dict:
    """Keras's default weight initializers, seeded (biases keep Keras's defaults);
    zeros when seed is None (the weights are about to be restored)."""
    if seed is None:
        return dict(kernel_initializer="zeros", recurrent_initializer="zeros")
    return dict(
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed[0]),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed[1]),
    )


class KerasRecurrent(keras.layers.Layer):
    """A stock Keras recurrent layer, batch-major, taking and returning one state tensor."""

    def __init__(self, cell: str, units: int, one_hot: bool, vocab_size: int, seed, **kwargs):
        super().__init__(**kwargs)
        self.cell_type, self.units, self.one_hot, self.vocab_size = cell, units, one_hot, vocab_size
        layer_class = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}[cell]
        options = dict(reset_after=True) if cell == "gru" else {}
        self.layer = layer_class(units, return_sequences=True, return_state=True, **options, **_cell_initializers(cell, units, seed))

    def build(self, input_shape):
        self.layer.build(input_shape)
        self.built = True

    @property
    def cell_weights(self):
        return self.layer.cell  # .kernel, .recurrent_kernel, .bias

    def call(self, x, state, training=False):
        if self.one_hot:
            x = tf.one_hot(x, self.vocab_size)  # [B, T, V]: the stock layer needs real inputs
        if self.cell_type == "lstm":
            outputs, h, c = self.layer(x, initial_state=tf.split(state, 2, axis=-1), training=training)
            return outputs, tf.concat([h, c], axis=-1)
        outputs, h = self.layer(x, initial_state=[state], training=training)
        return outputs, h


class FusedRecurrent(keras.layers.Layer):
    """Our CPU recurrent layer, time-major: x [T, B, I] (or ids [T, B]) -> h [T, B, U].

    The input projection of the whole sequence is one matmul (a row gather of the
    kernel for one-hot input); only h @ recurrent_kernel stays inside the loop.
    The loop is unrolled when T is known when tracing, otherwise it is a tf.scan.
    The GRU's backward pass is written by hand (`_gru_recurrence`); LSTM and RNN
    use autodiff through the loop.
    """

    def __init__(self, cell: str, units: int, one_hot: bool, vocab_size: int, seed, **kwargs):
        super().__init__(**kwargs)
        self.cell_type, self.units, self.one_hot = cell, units, one_hot
        self.initializers = _cell_initializers(cell, units, seed)

    def build(self, input_shape):
        G, U = GATES[self.cell_type] * self.units, self.units
        init = self.initializers
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], G), initializer=init["kernel_initializer"])
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(U, G), initializer=init["recurrent_initializer"])
        bias_shape = (2, G) if self.cell_type == "gru" else (G,)  # GRU reset_after: input and recurrent bias
        self.bias = self.add_weight(name="bias", shape=bias_shape, initializer=self._bias_initializer)
        self.built = True

    def _bias_initializer(self, shape, dtype=None):
        if self.cell_type == "lstm":  # gates i, f, c, o: the forget gate starts open, as in Keras
            U = self.units
            return tf.concat([tf.zeros([U]), tf.ones([U]), tf.zeros([2 * U])], axis=0)
        return tf.zeros(shape)

    @property
    def cell_weights(self):
        return self

    def call(self, x, state, training=False):
        U = self.units
        if self.one_hot:
            xw = tf.gather(self.kernel, x)  # [T, B, G]: one_hot(x) @ kernel without the matmul
        else:
            xw = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), self.kernel)  # [T·B, G]
            xw = tf.reshape(xw, tf.concat([tf.shape(x)[:2], [-1]], 0))  # [T, B, G]

        if self.cell_type == "gru":
            if xw.shape[0] is not None:
                hs = _gru_recurrence(xw, state, self.recurrent_kernel, self.bias)
            else:
                hs = _scan(_gru_step, xw + self.bias[0], state, self.recurrent_kernel, self.bias[1])
            return hs, hs[-1]
        xw = xw + self.bias
        if self.cell_type == "lstm":
            hcs = _scan(_lstm_step, xw, state, self.recurrent_kernel)  # [T, B, 2U]: h and c
            return hcs[:, :, :U], hcs[-1]
        hs = _scan(_rnn_step, xw, state, self.recurrent_kernel)
        return hs, hs[-1]


# One time step of each cell, in Keras's gate order and semantics.
# xw_t [B, G] is the input projection plus input bias; state [B, S].

def _gru_step(xw_t, h, recurrent_kernel, recurrent_bias):
    """Keras GRU, reset_after=True (the cuDNN variant): gates z, r, h.

    Used when T is unknown; `_gru_recurrence` inlines the same step.
    """
    U = h.shape[-1]
    rh = tf.matmul(h, recurrent_kernel) + recurrent_bias  # [B, 3U]
    zr = tf.sigmoid(xw_t[:, : 2 * U] + rh[:, : 2 * U])  # [B, 2U]
    z, r = zr[:, :U], zr[:, U:]
    hh = tf.tanh(xw_t[:, 2 * U :] + r * rh[:, 2 * U :])  # candidate, [B, U]
    return z * h + (1 - z) * hh


def _lstm_step(xw_t, hc, recurrent_kernel):
    """Keras LSTM: gates i, f, c, o; state is h and c concatenated."""
    h, c = tf.split(hc, 2, axis=-1)
    i, f, g, o = tf.split(xw_t + tf.matmul(h, recurrent_kernel), 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return tf.concat([h, c], axis=-1)


def _rnn_step(xw_t, h, recurrent_kernel):
    """Keras SimpleRNN: h_t = tanh(x_t W + b + h_{t-1} U)."""
    return tf.tanh(xw_t + tf.matmul(h, recurrent_kernel))


def _scan(step, xw, state, *weights):
    """Run step over time with autodiff: unrolled if T is static, else a tf.scan."""
    if xw.shape[0] is None:
        return tf.scan(lambda s, xw_t: step(xw_t, s, *weights), xw, initializer=state)
    outputs = []
    for xw_t in tf.unstack(xw):
        state = step(xw_t, state, *weights)
        outputs.append(state)
    return tf.stack(outputs)  # [T, B, S]


def _gru_recurrence(xw, h0, recurrent_kernel, bias):
    """Unrolled GRU recurrence with a hand-written backward pass.

    xw: [T, B, 3U] input projection; h0: [B, U]; bias: [2, 3U], the input and the
    recurrent bias. Returns hs [T, B, U].

    Autodiff through the loop would do three small matmuls per step (forward,
    data gradient, weight gradient) and some twenty small elementwise ops. The
    backward here does what cuDNN does:
    - every factor that does not depend on the gradient flowing back in time is
      computed once for the whole sequence, with ops on [T, B, U] tensors:
        A = (1 - z)(1 - hh²)                       dL/d(candidate pre-activation), per dh
        F = [(h_prev - hh) z (1 - z),  A r_h r (1 - r),  A r]
                                                   gradient of rh = h_prev @ U + b_rec, per dh
    - per step, backwards in time, only
        dh = dL/dh_t (from above) + carry,   dRH_t = dh · F_t,   carry = dh z + dRH_t @ Uᵀ
    - after the loop, the weight gradients in one large matmul:
        dU = H_prevᵀ · dRH  over all T·B rows,
      and dXW = [dRH_z, dRH_r, dh · A], which flows on to the input projection.
      The bias gradients are the column sums of dXW and dRH, taken as matmuls
      with a row of ones: 1-4% faster per step at 3x512 than reduce_sum.
    """

    @tf.custom_gradient
    def recurrence(xw, h0, recurrent_kernel, bias):
        U = h0.shape[-1]
        xw, recurrent_bias = xw + bias[0], bias[1]
        h, steps, hs = h0, [], []  # steps: per step (h_prev, z, r, hh, rh_h)
        for xw_t, xh_t in zip(tf.unstack(xw), tf.unstack(xw[:, :, 2 * U :])):  # xh: input part of the candidate
            rh = tf.matmul(h, recurrent_kernel) + recurrent_bias  # [B, 3U]
            gates = tf.sigmoid(xw_t + rh)  # z, r (and an unused third block)
            z, r, rh_h = gates[:, :U], gates[:, U : 2 * U], rh[:, 2 * U :]
            hh = tf.tanh(xh_t + r * rh_h)  # candidate, [B, U]
            steps.append((h, z, r, hh, rh_h))
            h = hh + z * (h - hh)  # = z h + (1 - z) hh
            hs.append(h)

        def grad(dhs):
            h_prev, z, r, hh, rh_h = (tf.stack(s) for s in zip(*steps))  # each [T, B, U]
            a = (1 - z) * (1 - hh * hh)
            f = tf.stack([(h_prev - hh) * z * (1 - z), a * rh_h * r * (1 - r), a * r], axis=2)  # [T, B, 3, U]
            kernel_t = tf.transpose(recurrent_kernel)  # [3U, U]
            carry, dh_steps, drh_steps = tf.zeros_like(h0), [], []
            for dh_t, f_t, z_t in reversed(list(zip(tf.unstack(dhs), tf.unstack(f), tf.unstack(z)))):
                dh = dh_t + carry  # [B, U]
                drh = tf.reshape(dh[:, None, :] * f_t, [-1, 3 * U])  # [B, 3U]
                carry = dh * z_t + tf.matmul(drh, kernel_t)
                dh_steps.append(dh)
                drh_steps.append(drh)
            drh = tf.stack(drh_steps[::-1])  # [T, B, 3U]
            dh = tf.stack(dh_steps[::-1])  # [T, B, U]
            d_xw = tf.concat([drh[:, :, : 2 * U], dh * a], axis=2)
            drh, d_xw = tf.reshape(drh, [-1, 3 * U]), tf.reshape(d_xw, [-1, 3 * U])  # [T·B, 3U]
            d_kernel = tf.matmul(tf.reshape(h_prev, [-1, U]), drh, transpose_a=True)
            ones = tf.ones([1, tf.shape(drh)[0]])
            d_bias = tf.concat([tf.matmul(ones, d_xw), tf.matmul(ones, drh)], axis=0)  # [2, 3U]
            return tf.reshape(d_xw, tf.shape(xw)), carry, d_kernel, d_bias

        return tf.stack(hs), grad

    # Tensors, not variables: the gradient reaches the variables through their reads.
    return recurrence(xw, h0, tf.convert_to_tensor(recurrent_kernel), tf.convert_to_tensor(bias))
