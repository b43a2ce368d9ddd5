"""The character-level RNN language model: one Keras model for training and generation.

One `CharRNN` serves training, validation and generation. The recurrent state of
every layer is passed in and returned explicitly, so the training loop can carry
it from one batch to the next and the sampler can feed one character at a time.

Two interchangeable implementations hold the same weights in Keras's layout:
- "keras": the stock `keras.layers.GRU`/`LSTM`/`SimpleRNN` (cuDNN on a GPU);
- "fused": our own CPU path. It works time-major, projects the inputs of a whole
  sequence with large matmuls before the loop (a row gather for one-hot input), unrolls
  the recurrence, and for the GRU writes the backward pass by hand (fused.py).
  A batch of 64 rows or more runs as two independent groups of rows (each with
  its own dropout masks), which TensorFlow computes at the same time;
  tf_setup.training_threads() gives each op half the cores to match.
A model trained with one loads into the other through `named_variables()`;
"auto" picks one for this machine (tf_setup.implementation_for).

Either can compute in a low precision (`precision` "bf16" or "fp16", chosen by
precision.py): the variables stay float32, so checkpoints do not depend on it;
the fused layers and the readout cast the operands of their matmuls down and the
products back up, and the stock layers follow Keras's mixed dtype policy.

Weight-drop (`ModelConfig.weight_drop`, as in AWD-LSTM) regularises the recurrence
itself: in training, each layer reads its recurrent kernel through a dropout mask
drawn once per batch, the same for every row and time step. Both implementations
read the masked kernel in place of the variable (a Keras stateless scope), so they
drop the same weights and agree in training too.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from charrnn.config import IMPLEMENTATIONS, ModelConfig
from charrnn.fused import FusedRecurrent
from charrnn.precision import DTYPES, KERAS_POLICIES
from charrnn.tf_setup import implementation_for

ROW_GROUPS, MIN_GROUP_ROWS = 2, 32  # the fused path splits a batch of 64+ rows in 2 groups


def _seeds(seed: int, n: int) -> list[int]:
    """n independent, reproducible int31 seeds derived from one."""
    return [int(s) >> 1 for s in np.random.SeedSequence(seed).generate_state(n)]


class CharRNN(keras.Model):
    """Stacked GRU/LSTM/RNN over characters, with the states in and out explicitly.

    call(ids [B, T] int, states) -> (logits [B, T, V] float32, new states), where
    states is a list with one float32 [B, S] tensor per layer (S from state_sizes()),
    whatever the precision.
    """

    def __init__(self, config: ModelConfig, implementation: str = "auto", initialize: bool = True,
                 precision: str = "fp32", **kwargs):
        """initialize=False fills the weights with zeros, for a model whose weights are
        restored at once: it saves the orthogonal initializers' time before the first
        generated character.
        precision: "fp32", "bf16" or "fp16", already resolved (precision.resolve)."""
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {tuple(DTYPES)}, got {precision!r}")
        implementation = implementation_for(implementation, gpu=bool(tf.config.list_physical_devices("GPU")))
        self.config = config
        self.implementation = implementation
        self.precision = precision
        c = config
        seeds = iter(_seeds(c.seed, 4 * c.layers + 3))

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
            seed = (next(seeds), next(seeds))  # drawn either way: the dropout seeds come after
            init = _cell_initializers(seed if initialize else None)
            self.rnns.append(layer_class(c.cell, c.units, one_hot, init, precision=precision))
        # dropouts[l] acts on the output of layer l: the input of layer l+1, or of the readout.
        self.dropouts = [Dropout(c.dropout, seed=next(seeds)) for _ in range(c.layers)]
        self.readout = Readout(c.vocab_size, DTYPES[precision],
                               kernel_initializer=seeded(keras.initializers.GlorotUniform(seed=next(seeds))))
        # weight_drops[l] masks the recurrent kernel of layer l (seeds drawn last: the others stay as they were).
        self.weight_drops = [Dropout(c.weight_drop, seed=next(seeds)) for _ in range(c.layers)]

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
        kernels = self.recurrent_kernels(training)  # one weight-drop mask per batch, for every row group
        groups = self._row_groups(ids.shape[0])
        if not groups:
            return self._call_rows(ids, states, training, kernels)
        # Independent groups of rows, each through the whole model: TF runs them
        # side by side on different cores, with no copies between the layers.
        results = [
            self._call_rows(ids_g, list(states_g), training, kernels)
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

    def recurrent_kernels(self, training):
        """The recurrent kernel each layer reads in this call: with weight-drop in
        training, the kernel times a fresh dropout mask (scaled by 1/(1 - rate)), drawn
        once for the whole batch; otherwise None, the variable as it is."""
        if not (training and self.config.weight_drop):
            return [None] * len(self.rnns)
        return [drop(tf.convert_to_tensor(rnn.recurrent_kernel), training=True)
                for rnn, drop in zip(self.rnns, self.weight_drops)]

    def _call_rows(self, ids, states, training, kernels):
        time_major = self.implementation == "fused"
        x = tf.transpose(ids) if time_major else ids  # [T, B] or [B, T]
        if self.embedding is not None:
            x = self.embedding(x)  # [..., E]
        new_states = []
        for rnn, dropout, state, kernel in zip(self.rnns, self.dropouts, states, kernels):
            with _reading(rnn.recurrent_kernel, kernel):
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
                named[f"rnn_{layer}/{name}"] = getattr(rnn, name)
        named["readout/kernel"] = self.readout.kernel
        named["readout/bias"] = self.readout.bias
        return {name: v.value for name, v in named.items()}

    def rng_variables(self) -> dict[str, tf.Variable]:
        """The dropout and weight-drop random-generator states, needed to resume a run exactly."""
        return {
            f"{kind}_{layer}/seed_state": d.seed_generator.state.value
            for kind, drops in (("dropout", self.dropouts), ("weight_drop", self.weight_drops))
            for layer, d in enumerate(drops)
            if getattr(d, "seed_generator", None) is not None
        }


class Readout(keras.layers.Dense):
    """The logits: Keras's Dense, whose matmul may run in a low precision; the bias
    add and the logits stay float32, for the softmax and the loss."""

    def __init__(self, units, matmul_dtype="float32", **kwargs):
        super().__init__(units, **kwargs)
        self.matmul_dtype = tf.as_dtype(matmul_dtype)

    def call(self, inputs):
        if self.matmul_dtype == tf.float32:
            return super().call(inputs)
        flat = tf.cast(tf.reshape(inputs, [-1, inputs.shape[-1]]), self.matmul_dtype)  # [N, U]
        logits = tf.cast(tf.matmul(flat, tf.cast(self.kernel, self.matmul_dtype)), tf.float32)  # [N, V]
        return tf.reshape(tf.nn.bias_add(logits, self.bias), tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))


def _reading(variable, value):
    """A context in which every read of `variable` gives `value` (None: the variable
    itself). The stock layers read their weights themselves, so the masked kernel
    reaches them this way; the gradient flows through value to the variable. Nothing
    inside may update a variable: a stateless scope would only record the update."""
    if value is None:
        return contextlib.nullcontext()
    return keras.StatelessScope(state_mapping=[(variable, value)])


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
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Under tf.distribute every replica advances its copy of the generator's state
            # alike (distribute.py); the replica's id gives it masks of its own.
            seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group, alg="philox")
        bits = tf.random.stateless_uniform([(n + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:n]
        keep = tf.reshape(bits, tf.shape(inputs)) >= dropped
        return tf.where(keep, inputs * (65536 / (65536 - dropped)), tf.zeros_like(inputs))


def _cell_initializers(seed: tuple[int, int] | None) -> dict:
    """Keras's default weight initializers, seeded (biases keep Keras's defaults);
    zeros when seed is None (the weights are about to be restored)."""
    if seed is None:
        return dict(kernel_initializer="zeros", recurrent_initializer="zeros")
    return dict(
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed[0]),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed[1]),
    )


class KerasRecurrent(keras.layers.Layer):
    """A stock Keras recurrent layer, batch-major, taking and returning one state tensor.

    In a low precision it runs under Keras's mixed dtype policy: float32 weights,
    everything inside the layer (gates, and the state from step to step) in the
    low precision; its outputs and final state come back as float32.
    """

    def __init__(self, cell: str, units: int, one_hot: bool, initializers: dict, precision="fp32", **kwargs):
        super().__init__(**kwargs)
        self.cell_type, self.units, self.one_hot = cell, units, one_hot
        layer_class = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}[cell]
        options = dict(reset_after=True) if cell == "gru" else {}
        if KERAS_POLICIES[precision]:
            options["dtype"] = KERAS_POLICIES[precision]
        self.layer = layer_class(units, return_sequences=True, return_state=True, **options, **initializers)

    def build(self, input_shape):
        self.layer.build(input_shape)
        self.built = True

    # The same weight names as FusedRecurrent's: model.named_variables() reads them.
    kernel = property(lambda self: self.layer.cell.kernel)
    recurrent_kernel = property(lambda self: self.layer.cell.recurrent_kernel)
    bias = property(lambda self: self.layer.cell.bias)

    def call(self, x, state, training=False):
        if self.one_hot:
            x = tf.one_hot(x, self.layer.cell.kernel.shape[0])  # [B, T, V]: the stock layer needs real inputs
        if self.cell_type == "lstm":
            outputs, h, c = self.layer(x, initial_state=tf.split(state, 2, axis=-1), training=training)
            return tf.cast(outputs, tf.float32), tf.cast(tf.concat([h, c], axis=-1), tf.float32)
        outputs, h = self.layer(x, initial_state=[state], training=training)
        return tf.cast(outputs, tf.float32), tf.cast(h, tf.float32)
