"""The fused CPU recurrent kernels: the fast path of `model.CharRNN` on a CPU.

Why they exist. A stock Keras GRU trains well below what the CPU's matrix
multiplies allow: per time step it does the input projection, the recurrent
matmul and, under autodiff, two more small matmuls and a stack of every
intermediate. `FusedRecurrent` instead
- works time-major and projects the inputs of the whole sequence before the
  loop with large matmuls (a row gather of the kernel for one-hot input), so only
  `h @ recurrent_kernel` stays inside the loop;
- for the GRU in training, runs `_gru_training`: gate-major tensors ([3, ...],
  so no slices of a [B, 3U] tensor in the loop), and a backward pass written by
  hand that does one matmul per step and the weight gradients as large matmuls
  after the loop, as cuDNN does;
- keeps `_gru_step`'s one [B, U] x [U, 3U] matmul per step for generation, which
  runs under XLA, where the per-gate blocks were much slower;
- can run its matmuls in a low precision (bfloat16 or float16, see precision.py):
  the operands are cast down, each product is cast back to float32 at once, and
  everything else (biases, gates, the state, the weights and their
  gradients as the optimizer sees them) stays float32. With float32 no cast is
  added: `tf.cast` to a tensor's own dtype returns the tensor itself.
DEVELOPERS.md has the measurements behind each choice; benchmark.py measures them.

The contract. The weights are Keras's, in Keras's layout (kernel [I, G·U],
recurrent_kernel [U, G·U], bias [2, 3U] for the GRU with reset_after=True, [G·U]
otherwise; gate order z, r, h for the GRU and i, f, c, o for the LSTM), so a
checkpoint loads into the stock layers (cuDNN on a GPU) and back. A kernel is
correct when these tests pass:
- test_suite/test_model.py `test_fused_and_keras_implementations_agree`: the same
  logits and states as the stock layers, for every cell;
- test_suite/test_model.py `test_fused_gru_gradients_match_keras_gru`: the same
  gradients, one-hot and embedding input, through the final state too;
- test_suite/test_training.py `test_the_training_step_gives_adam_dense_gradients`:
  the product's training step moves the weights as Adam on the stock model's
  dense gradients does;
- test_suite/test_precision.py: in bfloat16 and float16, the outputs and gradients
  stay within the low precision's rounding of float32's.

Adding a cell: add its gate count to `config.GATES`, a `_<cell>_step(xw_t, state,
recurrent_kernel)` in Keras's gate order below, its branch in
`FusedRecurrent.call` (and its stock layer in `model.KerasRecurrent`); the tests
above then run on it once it is in `config.CELLS`.
"""

import keras
import tensorflow as tf

from charrnn.config import GATES
from charrnn.precision import DTYPES


class FusedRecurrent(keras.layers.Layer):
    """Our CPU recurrent layer, time-major: x [T, B, I] (or ids [T, B]) -> h [T, B, U].

    The input projection of the whole sequence is computed before the loop, with
    large matmuls (a row gather of the kernel for one-hot input); only
    h @ recurrent_kernel stays inside the loop.
    In training, when T is known when tracing, the GRU runs `_gru_training`
    (unrolled, with a hand-written backward pass); otherwise, and for LSTM and
    RNN, the loop is unrolled or a tf.scan, with autodiff through it.
    """

    def __init__(self, cell: str, units: int, one_hot: bool, initializers: dict, precision="fp32", **kwargs):
        """initializers: kernel_initializer and recurrent_initializer, as for Keras's layers.
        precision: "fp32", "bf16" or "fp16", the dtype of the matmuls; the weights and
        the outputs stay float32."""
        super().__init__(**kwargs)
        self.cell_type, self.units, self.one_hot = cell, units, one_hot
        self.initializers = initializers
        self.matmul_dtype = tf.as_dtype(DTYPES[precision])

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

    def call(self, x, state, training=False):
        if self.cell_type == "gru" and training and x.shape[0] is not None:
            # Training only: under XLA (the generation loop) the per-gate blocks ran
            # much slower than `_gru_step`'s one matmul per step (DEVELOPERS.md).
            # Tensors, not variables: the gradients reach the variables through their reads.
            hs = _gru_training(x, state, *(tf.convert_to_tensor(w) for w in (self.kernel, self.recurrent_kernel, self.bias)),
                               self.one_hot, self.matmul_dtype)
            return hs, hs[-1]
        U = self.units
        if self.one_hot:
            xw = tf.gather(self.kernel, x)  # [T, B, G]: one_hot(x) @ kernel without the matmul
        else:
            xw = _matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.cast(self.kernel, self.matmul_dtype))  # [T·B, G]
            xw = tf.reshape(xw, tf.concat([tf.shape(x)[:2], [-1]], 0))  # [T, B, G]
        recurrent_kernel = tf.cast(self.recurrent_kernel, self.matmul_dtype)  # cast once, outside the loop
        if self.cell_type == "gru":
            hs = _scan(_gru_step, xw + self.bias[0], state, recurrent_kernel, self.bias[1])
            return hs, hs[-1]
        xw = xw + self.bias
        if self.cell_type == "lstm":
            hcs = _scan(_lstm_step, xw, state, recurrent_kernel)  # [T, B, 2U]: h and c
            return hcs[:, :, :U], hcs[-1]
        hs = _scan(_rnn_step, xw, state, recurrent_kernel)
        return hs, hs[-1]


def _matmul(a, b, dtype=None, **kwargs):
    """a @ b in b's dtype (a is cast to it), returned in `dtype` (default: a's).

    With operands already float32 this is tf.matmul: the casts return their input."""
    return tf.cast(tf.matmul(tf.cast(a, b.dtype), b, **kwargs), dtype or a.dtype)


# One time step of each cell, in Keras's gate order and semantics.
# xw_t [B, G] is the input projection plus input bias; state [B, S], float32;
# recurrent_kernel already in the matmul dtype (cast once per sequence).

def _gru_step(xw_t, h, recurrent_kernel, recurrent_bias):
    """Keras GRU, reset_after=True (the cuDNN variant): gates z, r, h.

    Used outside training and when T is unknown; `_gru_training` computes the same.
    """
    U = h.shape[-1]
    rh = _matmul(h, recurrent_kernel) + recurrent_bias  # [B, 3U]
    zr = tf.sigmoid(xw_t[:, : 2 * U] + rh[:, : 2 * U])  # [B, 2U]
    z, r = zr[:, :U], zr[:, U:]
    hh = tf.tanh(xw_t[:, 2 * U :] + r * rh[:, 2 * U :])  # candidate, [B, U]
    return z * h + (1 - z) * hh


def _lstm_step(xw_t, hc, recurrent_kernel):
    """Keras LSTM: gates i, f, c, o; state is h and c concatenated."""
    h, c = tf.split(hc, 2, axis=-1)
    i, f, g, o = tf.split(xw_t + _matmul(h, recurrent_kernel), 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return tf.concat([h, c], axis=-1)


def _rnn_step(xw_t, h, recurrent_kernel):
    """Keras SimpleRNN: h_t = tanh(x_t W + b + h_{t-1} U)."""
    return tf.tanh(xw_t + _matmul(h, recurrent_kernel))


def _scan(step, xw, state, *weights):
    """Run step over time with autodiff: unrolled if T is static, else a tf.scan."""
    if xw.shape[0] is None:
        return tf.scan(lambda s, xw_t: step(xw_t, s, *weights), xw, initializer=state)
    outputs = []
    for xw_t in tf.unstack(xw):
        state = step(xw_t, state, *weights)
        outputs.append(state)
    return tf.stack(outputs)  # [T, B, S]


def _gru_training(x, h0, kernel, recurrent_kernel, bias, one_hot, matmul_dtype=tf.float32):
    """The GRU over a whole sequence in training, with a hand-written backward pass.

    x: [T, B, I] float32, or ids [T, B] when one_hot; h0: [B, U]; kernel [I, 3U],
    recurrent_kernel [U, 3U], bias [2, 3U] in Keras's layout (reset_after=True).
    Returns hs [T, B, U]. All float32; the matmuls run in matmul_dtype, their
    products cast back to float32.

    Forward. The input projection of the whole sequence first, gate-major,
    [3, T, B, U] (a batched matmul with the kernel as three [I, U] gate blocks, or
    for one-hot input a gather of rows of kernel + bias): each gate's slice is
    contiguous, so nothing in the loop is copied out of a wider tensor. Then per
    step one batched matmul of h with the recurrent kernel's three [U, U] blocks
    ([3, B, U]; three separate matmuls run 25-35% slower at these shapes):
        z = σ(xz + bz + h Kz),  r = σ(xr + br + h Kr),  rh = h Kh + bh,
        hh = tanh(xh + r·rh),   h' = hh + z·(h - hh)  (= z·h + (1 - z)·hh)
    (the input projections xz, xr, xh include the input bias; bz and br are added
    with it, before the loop).

    Backward. Autodiff through the loop would add two small matmuls per step (the
    data and the weight gradient) and stack every intermediate. This does what
    cuDNN does:
    - per step, backwards in time, the gate derivatives and one matmul:
        dh = dL/dh_t (from above) + carry
        dZ = dh (h - hh) z (1 - z),  dXH = dh (1 - z)(1 - hh²),  dR = dXH rh r (1 - r)
        dRH = [dZ, dR, dXH·r]        gradient of the recurrent part h K + b, [B, 3U]
        carry = dh z + dRH Kᵀ
      (σ' and tanh' as TensorFlow's fused SigmoidGrad and TanhGrad: one op each);
    - after the loop, with dX = [dZ, dR, dXH] the gradient of the input
      projection, everything as large matmuls over all T·B rows, in Keras's
      layout: dK = H_prevᵀ dRH, dW = Xᵀ dX, dx = dX Wᵀ (for one-hot input, dW is
      the rows of dX summed by id), and the biases' column sums 1ᵀ dX and
      1ᵀ dRH (as a matmul, faster than reduce_sum).
    In a low matmul_dtype the element-wise work, the carry and the bias gradients
    stay float32; the matmuls' operands are cast down.
    """
    U = h0.shape[-1]

    @tf.custom_gradient
    def sequence(x, h0, kernel, recurrent_kernel, bias):
        xs, flat, kernel_mm = _gru_input_projection(x, kernel, bias, one_hot, matmul_dtype)
        rec_kernel = tf.cast(recurrent_kernel, matmul_dtype)  # [U, 3U]; the same tensor in float32
        hs, saved = _gru_forward(xs, h0, rec_kernel, bias[1, 2 * U :])

        def grad(dhs):
            d_rh, d_x, carry = _gru_backward_steps(dhs, saved, h0, rec_kernel)
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], 0), [-1, U])  # [T·B, U]
            d_rec_kernel = _matmul(h_prev, tf.cast(d_rh, matmul_dtype), transpose_a=True)  # [U, 3U]
            ones = tf.ones([1, tf.shape(d_x)[0]])  # the batch may be unknown when tracing
            d_bias = tf.concat([tf.matmul(ones, d_x), tf.matmul(ones, d_rh)], 0)  # [2, 3U]
            if one_hot:
                return None, carry, tf.math.unsorted_segment_sum(d_x, tf.reshape(x, [-1]), kernel.shape[0]), \
                    d_rec_kernel, d_bias
            d_x_mm = tf.cast(d_x, matmul_dtype)
            d_kernel = _matmul(flat, d_x_mm, tf.float32, transpose_a=True)  # [I, 3U]
            d_input = tf.reshape(_matmul(d_x_mm, kernel_mm, tf.float32, transpose_b=True), tf.shape(x))
            return d_input, carry, d_kernel, d_rec_kernel, d_bias

        return hs, grad

    return sequence(x, h0, kernel, recurrent_kernel, bias)


def _gate_major(w, U):
    """[N, 3U] -> [3, N, U]: each gate's block contiguous."""
    return tf.transpose(tf.reshape(w, [-1, 3, U]), [1, 0, 2])


def _gru_input_projection(x, kernel, bias, one_hot, matmul_dtype):
    """The input projection of the whole sequence plus the input bias and the z and r
    recurrent biases (added once, not per step), gate-major: xs [3, T, B, U]. Also the
    input and the kernel in matmul_dtype, which the backward reuses (None for one-hot)."""
    T, U = x.shape[0], kernel.shape[-1] // 3
    input_bias = bias[0] + tf.concat([bias[1, : 2 * U], tf.zeros([U])], 0)  # [3U]
    if one_hot:  # one_hot(x) @ kernel + bias without the matmul: rows of the table
        return tf.gather(_gate_major(kernel + input_bias, U), x, axis=1), None, None  # [3, T, B, U]
    flat = tf.cast(tf.reshape(x, [-1, x.shape[-1]]), matmul_dtype)  # [T·B, I]
    kernel_mm = tf.cast(kernel, matmul_dtype)
    xw = _matmul(flat[None], _gate_major(kernel_mm, U), tf.float32)  # [3, T·B, U]
    return tf.reshape(xw + _gate_major(input_bias[None], U), [3, T, -1, U]), flat, kernel_mm


def _gru_forward(xs, h0, rec_kernel, b_h):
    """The recurrence, one batched matmul of h with the kernel's three [U, U] gate blocks a
    step. Returns hs [T, B, U] and, per step, what the backward needs: (h - hh, z, r, rh, hh)."""
    rec_gates = _gate_major(rec_kernel, h0.shape[-1])  # [3, U, U]
    h, saved, hs = h0, [], []
    for xz_t, xr_t, xh_t in zip(*(tf.unstack(g) for g in tf.unstack(xs))):
        hk_z, hk_r, hk_h = tf.unstack(_matmul(h[None], rec_gates))  # [3, B, U] -> three [B, U]
        z, r = tf.sigmoid(xz_t + hk_z), tf.sigmoid(xr_t + hk_r)  # [B, U]
        rh = hk_h + b_h
        hh = tf.tanh(xh_t + r * rh)  # candidate
        h_minus_hh = h - hh
        saved.append((h_minus_hh, z, r, rh, hh))
        h = hh + z * h_minus_hh
        hs.append(h)
    return tf.stack(hs), saved


def _gru_backward_steps(dhs, saved, h0, rec_kernel):
    """Backwards in time, the gate derivatives and one matmul a step. Returns dRH
    [T·B, 3U] (the gradient of h K + b), dX [T·B, 3U] (of the input projection) and the
    gradient of h0."""
    U = h0.shape[-1]
    carry, d_rh, d_xh = tf.zeros_like(h0), [], []
    for dh_t, (h_minus_hh, z, r, rh, hh) in reversed(list(zip(tf.unstack(dhs), saved))):
        dh = dh_t + carry
        dh_z = dh * z
        dz = tf.raw_ops.SigmoidGrad(y=z, dy=dh * h_minus_hh)
        dxh = tf.raw_ops.TanhGrad(y=hh, dy=dh - dh_z)
        dr = tf.raw_ops.SigmoidGrad(y=r, dy=dxh * rh)
        d_rh.append(tf.concat([dz, dr, dxh * r], axis=1))  # [B, 3U]
        d_xh.append(dxh)
        carry = dh_z + _matmul(d_rh[-1], rec_kernel, transpose_b=True)
    d_rh = tf.reshape(tf.stack(d_rh[::-1]), [-1, 3 * U])  # [T·B, 3U]
    d_x = tf.concat([d_rh[:, : 2 * U], tf.reshape(tf.stack(d_xh[::-1]), [-1, U])], 1)  # [T·B, 3U]
    return d_rh, d_x, carry
