"""The character-level RNN language model: its configuration and the Keras model.

One `CharRNN` serves training, validation and generation. The recurrent state of
every layer is passed in and returned explicitly, so the training loop can carry
it from one batch to the next and the sampler can feed one character at a time.

Two interchangeable implementations hold the same weights in Keras's layout:
- "keras": the stock `keras.layers.GRU`/`LSTM`/`SimpleRNN` (cuDNN on a GPU);
- "fused": our own CPU path. It works time-major, projects the inputs of a whole
  sequence with large matmuls before the loop (a row gather for one-hot input), unrolls
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

    The input projection of the whole sequence is computed before the loop, with
    large matmuls (a row gather of the kernel for one-hot input); only
    h @ recurrent_kernel stays inside the loop.
    In training, when T is known when tracing, the GRU runs `_gru_recurrence`
    (unrolled, with a hand-written backward pass); otherwise, and for LSTM and
    RNN, the loop is unrolled or a tf.scan, with autodiff through it.
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
        if self.cell_type == "gru" and training and x.shape[0] is not None:
            # Training only: under XLA (the generation loop) the per-gate blocks ran
            # 15x slower than `_gru_step`'s one matmul per step.
            # Tensors, not variables: the gradients reach the variables through their reads.
            hs = _gru_recurrence(self._gru_inputs(x), state, tf.convert_to_tensor(self.recurrent_kernel), self.bias[1])
            return hs, hs[-1]
        U = self.units
        if self.one_hot:
            xw = tf.gather(self.kernel, x)  # [T, B, G]: one_hot(x) @ kernel without the matmul
        else:
            xw = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), self.kernel)  # [T·B, G]
            xw = tf.reshape(xw, tf.concat([tf.shape(x)[:2], [-1]], 0))  # [T, B, G]
        if self.cell_type == "gru":
            hs = _scan(_gru_step, xw + self.bias[0], state, self.recurrent_kernel, self.bias[1])
            return hs, hs[-1]
        xw = xw + self.bias
        if self.cell_type == "lstm":
            hcs = _scan(_lstm_step, xw, state, self.recurrent_kernel)  # [T, B, 2U]: h and c
            return hcs[:, :, :U], hcs[-1]
        hs = _scan(_rnn_step, xw, state, self.recurrent_kernel)
        return hs, hs[-1]

    def _gru_inputs(self, x):
        """The GRU's input projection plus input bias as three [T, B, U] tensors, one
        per gate (z, r, candidate): contiguous, so the loop slices nothing. Their
        gradients reach the [I, 3U] kernel dense, through small column slices."""
        U = self.units
        blocks = [slice(i * U, (i + 1) * U) for i in range(3)]
        if self.one_hot:  # rows of kernel + bias: one_hot(x) @ kernel + bias without the matmul
            table = self.kernel + self.bias[0]  # [V, 3U]
            return [tf.gather(table[:, b], x) for b in blocks]
        flat = tf.reshape(x, [-1, x.shape[-1]])  # [T·B, I]
        return [tf.reshape(tf.nn.bias_add(tf.matmul(flat, self.kernel[:, b]), self.bias[0, b]), [x.shape[0], -1, U]) for b in blocks]


# One time step of each cell, in Keras's gate order and semantics.
# xw_t [B, G] is the input projection plus input bias; state [B, S].

def _gru_step(xw_t, h, recurrent_kernel, recurrent_bias):
    """Keras GRU, reset_after=True (the cuDNN variant): gates z, r, h.

    Used outside training and when T is unknown; `_gru_recurrence` computes the same.
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


def _gru_recurrence(xs, h0, recurrent_kernel, recurrent_bias):
    """Unrolled GRU recurrence with a hand-written backward pass.

    xs: the input projections plus input bias of the gates z, r and the candidate,
    three [T, B, U] tensors; h0: [B, U]; recurrent_kernel [U, 3U] and
    recurrent_bias [3U] in Keras's layout. Returns hs [T, B, U].

    Forward, per step: one [U, U] block of the recurrent kernel per gate, so every
    per-step tensor is contiguous (no slices of a [B, 3U] tensor in the loop):
        z = σ(xz + h Kz + bz),  r = σ(xr + h Kr + br),  rh = h Kh + bh,
        hh = tanh(xh + r·rh),   h' = z·h + (1 - z)·hh
    Autodiff through the loop would add two small matmuls per step (the data and
    the weight gradient) and stack every intermediate. The backward does what
    cuDNN does:
    - per step, backwards in time, the gate derivatives and one matmul:
        dh = dL/dh_t (from above) + carry
        dZ = dh (h - hh) z (1 - z),  dXH = dh (1 - z)(1 - hh²),  dR = dXH rh r (1 - r)
        dRH = [dZ, dR, dXH·r]        gradient of the recurrent part h K + b, [B, 3U]
        carry = dh z + dRH Kᵀ
    - after the loop, the weight gradients as large matmuls over all T·B rows:
        dK = H_prevᵀ dRH,  db = 1ᵀ dRH  (a column sum; as a matmul it is faster
      than reduce_sum), and [dZ, dR, dXH] flow on to the input projection.
    """

    @tf.custom_gradient
    def recurrence(xz, xr, xh, h0, recurrent_kernel, recurrent_bias):
        U = h0.shape[-1]
        (k_z, k_r, k_h), (b_z, b_r, b_h) = tf.split(recurrent_kernel, 3, axis=1), tf.split(recurrent_bias, 3)
        h, steps, hs = h0, [], []  # steps: per step (h_prev, z, r, rh, hh)
        for xz_t, xr_t, xh_t in zip(tf.unstack(xz), tf.unstack(xr), tf.unstack(xh)):
            z = tf.sigmoid(xz_t + (tf.matmul(h, k_z) + b_z))  # [B, U]
            r = tf.sigmoid(xr_t + (tf.matmul(h, k_r) + b_r))
            rh = tf.matmul(h, k_h) + b_h
            hh = tf.tanh(xh_t + r * rh)  # candidate
            steps.append((h, z, r, rh, hh))
            h = hh + z * (h - hh)  # = z h + (1 - z) hh
            hs.append(h)
        hs = tf.stack(hs)  # [T, B, U]

        def grad(dhs):
            carry, d_steps = tf.zeros_like(h0), []
            for dh_t, (h_prev, z, r, rh, hh) in reversed(list(zip(tf.unstack(dhs), steps))):
                dh = dh_t + carry
                dz = dh * (h_prev - hh) * (z - z * z)
                dxh = dh * (1 - z) * (1 - hh * hh)
                dr = dxh * rh * (r - r * r)
                drh = tf.concat([dz, dr, dxh * r], axis=1)  # [B, 3U]
                carry = dh * z + tf.matmul(drh, recurrent_kernel, transpose_b=True)
                d_steps.append((dz, dr, dxh, drh))
            d_z, d_r, d_xh, d_rh = (tf.stack(d[::-1]) for d in zip(*d_steps))  # [T, B, U] or [T, B, 3U]
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], 0), [-1, U])  # [T·B, U]
            d_rh = tf.reshape(d_rh, [-1, 3 * U])
            d_kernel = tf.matmul(h_prev, d_rh, transpose_a=True)  # [U, 3U]
            d_bias = tf.matmul(tf.ones([1, tf.shape(d_rh)[0]]), d_rh)[0]  # [3U]
            return d_z, d_r, d_xh, carry, d_kernel, d_bias

        return hs, grad

    return recurrence(*xs, h0, recurrent_kernel, recurrent_bias)
