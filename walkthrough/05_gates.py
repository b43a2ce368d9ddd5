"""Chapter 5: gates. The GRU and the LSTM cell by hand, checked against Keras.

Chapter 4 showed the plain RNN's gradient shrinking by a factor at every step.
A gated cell adds a path along which the state is copied, not squashed, and
learns when to copy. Keras's GRU (`reset_after=True`, the form cuDNN runs and
this project uses), in the row-vector layout Keras stores (x_t is a row of I
numbers, the state h_t a row of U):

    z_t = σ(x_t·K_z + b_z + h_{t-1}·R_z + b'_z)             update gate, U numbers in (0, 1)
    r_t = σ(x_t·K_r + b_r + h_{t-1}·R_r + b'_r)             reset gate
    ĥ_t = tanh(x_t·K_h + b_h + r_t ⊙ (h_{t-1}·R_h + b'_h))  candidate state
    h_t = z_t ⊙ h_{t-1} + (1 - z_t) ⊙ ĥ_t

σ(a) = 1 / (1 + e^-a) squashes any number into (0, 1), and ⊙ multiplies
element by element. The weights are three arrays: kernel [I, 3U] = [K_z K_r K_h],
recurrent_kernel [U, 3U] = [R_z R_r R_h], and bias [2, 3U], whose row 0 holds
the input biases b and row 1 the recurrent biases b'. Where z_t is near 1,
h_t ≈ h_{t-1}: the state, and its gradient, pass through unchanged, the
product of chapter 4 is a product of factors near 1, and the gradient survives
many steps. Part 3 measures it: over 50 steps, the norm of dh_50/dh_0 is
1e-9 with the update gate's bias at 0 (z ≈ 0.5) and 0.5 with it at 4 (z ≈ 0.98).

The backward pass, from t = T down to 1, with σ' = σ(1 - σ) and tanh' = 1 - tanh²
(dh: dL/dh_t from the loss at step t plus the carry from step t + 1):

    dz  = dh ⊙ (h_{t-1} - ĥ_t) ⊙ z(1 - z)       gradient of z's argument
    dĥ  = dh ⊙ (1 - z) ⊙ (1 - ĥ²)              gradient of ĥ's argument
    dr  = dĥ ⊙ (h_{t-1}·R_h + b'_h) ⊙ r(1 - r)
    d(x_t·K + b) = [dz, dr, dĥ]                  so dK += x_tᵀ·[dz, dr, dĥ], dx_t = [dz, dr, dĥ]·Kᵀ
    d(h_{t-1}·R + b') = [dz, dr, dĥ ⊙ r]          so dR += h_{t-1}ᵀ·[dz, dr, dĥ ⊙ r]
    carry = dh ⊙ z + [dz, dr, dĥ ⊙ r]·Rᵀ          dL/dh_{t-1} through step t

and the bias gradients db, db' are the sums of [dz, dr, dĥ] and [dz, dr, dĥ ⊙ r]
over the rows of the batch and over the steps.

These are the equations of this project's fused kernels, `fused.py`
(`_gru_step` for generation, `_gru_training` with this backward pass for
training), which run them on whole batches with TensorFlow ops. `model.py`
stacks `--layers` such cells, each reading the outputs h_t of the one below,
and ends with chapter 4's readout and softmax.

Keras's LSTM keeps a second state, the cell c_t, with four gates:

    [a_i a_f a_g a_o] = x_t·K + h_{t-1}·R + b          K [I, 4U], R [U, 4U], b [4U]
    c_t = σ(a_f) ⊙ c_{t-1} + σ(a_i) ⊙ tanh(a_g)        forget gate σ(a_f), input gate σ(a_i)
    h_t = σ(a_o) ⊙ tanh(c_t)                           output gate σ(a_o)

Along c, the step's factor is σ(a_f): an open forget gate passes the gradient
on, which is why Keras, and this project, start the forget bias at 1.

Parts 1 and 2 check the numpy cells against `keras.layers.GRU(reset_after=True)`
and `keras.layers.LSTM` holding the same weights: the outputs, and the
gradients of a loss with respect to the inputs, the initial state and every
weight, all in float64.

    python3 walkthrough/05_gates.py [--fast]     # a few seconds; --fast runs the same

Previous: 04_vanilla_rnn.py.  Next: 06_char_model.py.
"""

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs: errors only
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from charrnn import tf_setup  # noqa: E402  the project's quiet import: it hides TensorFlow's start-up lines
tf_setup.import_tensorflow()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, for checking.py
from checking import check  # noqa: E402  compares a result with the known one, and prints it

# Same formulas in float64 on both sides; only the order of the sums differs
# (relative differences ~1e-15). A wrong term would be off by 1e-3 or more.

TOL = 1e-10


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# ---------------------------------------------------------------- GRU

def gru_forward(x, h0, kernel, recurrent_kernel, bias):
    """x [B, T, I], h0 [B, U] -> states hs [B, T, U], and per step what the backward needs."""
    U = h0.shape[1]
    xw = x @ kernel + bias[0]  # [B, T, 3U]: every step's x_t·K + b in one product
    h, hs, steps = h0, [], []
    for t in range(x.shape[1]):
        rh = h @ recurrent_kernel + bias[1]  # [B, 3U]: h_{t-1}·R + b'
        z = sigmoid(xw[:, t, :U] + rh[:, :U])  # [B, U]
        r = sigmoid(xw[:, t, U : 2 * U] + rh[:, U : 2 * U])
        hh = np.tanh(xw[:, t, 2 * U :] + r * rh[:, 2 * U :])  # the candidate ĥ_t
        steps.append((h, z, r, rh[:, 2 * U :], hh))
        h = z * h + (1 - z) * hh
        hs.append(h)
    return np.stack(hs, axis=1), steps


def gru_backward(dhs, x, kernel, recurrent_kernel, steps):
    """dhs [B, T, U]: dL/dh_t from the loss directly. Returns the gradients of L with
    respect to x, h0, kernel, recurrent_kernel and bias."""
    B, T, U = dhs.shape
    d_xw = np.empty((B, T, 3 * U))  # gradient of x_t·K + b at every step
    d_recurrent_kernel, d_recurrent_bias = np.zeros_like(recurrent_kernel), np.zeros(3 * U)
    carry = np.zeros((B, U))
    for t in reversed(range(T)):
        h_prev, z, r, rh_h, hh = steps[t]
        dh = dhs[:, t] + carry
        dz = dh * (h_prev - hh) * z * (1 - z)
        dxh = dh * (1 - z) * (1 - hh**2)
        dr = dxh * rh_h * r * (1 - r)
        d_xw[:, t] = np.concatenate([dz, dr, dxh], axis=1)  # [B, 3U]
        drh = np.concatenate([dz, dr, dxh * r], axis=1)  # [B, 3U]
        d_recurrent_kernel += h_prev.T @ drh  # [U, 3U]
        d_recurrent_bias += drh.sum(axis=0)
        carry = dh * z + drh @ recurrent_kernel.T  # [B, U]
    d_kernel = x.reshape(B * T, -1).T @ d_xw.reshape(B * T, -1)  # [I, 3U]
    d_bias = np.stack([d_xw.sum(axis=(0, 1)), d_recurrent_bias])  # [2, 3U]
    return d_xw @ kernel.T, carry, d_kernel, d_recurrent_kernel, d_bias


# ---------------------------------------------------------------- LSTM

def lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias):
    """x [B, T, I], h0 and c0 [B, U] -> hs [B, T, U], and per step what the backward needs."""
    U = h0.shape[1]
    xw = x @ kernel + bias  # [B, T, 4U]
    h, c, hs, steps = h0, c0, [], []
    for t in range(x.shape[1]):
        a = xw[:, t] + h @ recurrent_kernel  # [B, 4U]: a_i, a_f, a_g, a_o
        i, f, o = sigmoid(a[:, :U]), sigmoid(a[:, U : 2 * U]), sigmoid(a[:, 3 * U :])
        g = np.tanh(a[:, 2 * U : 3 * U])
        c_new = f * c + i * g
        steps.append((h, c, i, f, g, o, c_new))
        c, h = c_new, o * np.tanh(c_new)
        hs.append(h)
    return np.stack(hs, axis=1), steps


def lstm_backward(dhs, x, kernel, recurrent_kernel, steps):
    """dhs [B, T, U]: dL/dh_t from the loss directly. Returns the gradients of L with
    respect to x, h0, c0, kernel, recurrent_kernel and bias."""
    B, T, U = dhs.shape
    d_a = np.empty((B, T, 4 * U))  # gradient of the gates' arguments at every step
    d_recurrent_kernel = np.zeros_like(recurrent_kernel)
    dh_carry, dc_carry = np.zeros((B, U)), np.zeros((B, U))
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, c = steps[t]
        tc = np.tanh(c)
        dh = dhs[:, t] + dh_carry
        dc = dh * o * (1 - tc**2) + dc_carry  # c feeds h_t and c_{t+1}
        d_a[:, t] = np.concatenate(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2), dh * tc * o * (1 - o)], axis=1
        )  # [B, 4U]: d a_i, d a_f, d a_g, d a_o
        d_recurrent_kernel += h_prev.T @ d_a[:, t]  # [U, 4U]
        dh_carry = d_a[:, t] @ recurrent_kernel.T
        dc_carry = dc * f
    d_kernel = x.reshape(B * T, -1).T @ d_a.reshape(B * T, -1)  # [I, 4U]
    return d_a @ kernel.T, dh_carry, dc_carry, d_kernel, d_recurrent_kernel, d_a.sum(axis=(0, 1))


# ---------------------------------------------------------------- checks against Keras

def keras_gradients(layer, x, initial_state, dhs):
    """Keras's outputs and the gradients of L = sum(outputs ⊙ dhs), whose dL/dh_t is dhs,
    with respect to x, the initial state(s) and the layer's weights."""
    x = tf.constant(x)
    states = [tf.constant(s) for s in initial_state]
    with tf.GradientTape() as tape:
        tape.watch([x, *states])
        hs = layer(x, initial_state=states)  # [B, T, U]
        loss = tf.reduce_sum(hs * dhs)
    grads = tape.gradient(loss, [x, *states, *layer.weights])
    return hs.numpy(), [g.numpy() for g in grads]


def check_gru(rng, B, T, I, U):
    kernel = rng.normal(0, 0.5, (I, 3 * U))
    recurrent_kernel = rng.normal(0, 0.5, (U, 3 * U))
    bias = rng.normal(0, 0.5, (2, 3 * U))
    x, h0, dhs = rng.normal(size=(B, T, I)), rng.normal(size=(B, U)), rng.normal(size=(B, T, U))

    hs, steps = gru_forward(x, h0, kernel, recurrent_kernel, bias)  # [B, T, U]
    ours = gru_backward(dhs, x, kernel, recurrent_kernel, steps)

    layer = keras.layers.GRU(U, reset_after=True, return_sequences=True, dtype="float64")
    layer.build((B, T, I))
    layer.set_weights([kernel, recurrent_kernel, bias])  # the same layout: nothing to convert
    keras_hs, keras_grads = keras_gradients(layer, x, [h0], dhs)
    check("GRU outputs h_1..h_T", hs, keras_hs, TOL)
    for name, g, kg in zip(("x", "h0", "kernel", "recurrent_kernel", "bias"), ours, keras_grads):
        check(f"GRU dL/d{name}", g, kg, TOL)


def check_lstm(rng, B, T, I, U):
    kernel = rng.normal(0, 0.5, (I, 4 * U))
    recurrent_kernel = rng.normal(0, 0.5, (U, 4 * U))
    bias = rng.normal(0, 0.5, 4 * U)
    x, h0, c0 = rng.normal(size=(B, T, I)), rng.normal(size=(B, U)), rng.normal(size=(B, U))
    dhs = rng.normal(size=(B, T, U))

    hs, steps = lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias)
    ours = lstm_backward(dhs, x, kernel, recurrent_kernel, steps)

    layer = keras.layers.LSTM(U, return_sequences=True, dtype="float64")
    layer.build((B, T, I))
    layer.set_weights([kernel, recurrent_kernel, bias])
    keras_hs, keras_grads = keras_gradients(layer, x, [h0, c0], dhs)
    check("LSTM outputs h_1..h_T", hs, keras_hs, TOL)
    for name, g, kg in zip(("x", "h0", "c0", "kernel", "recurrent_kernel", "bias"), ours, keras_grads):
        check(f"LSTM dL/d{name}", g, kg, TOL)


# ---------------------------------------------------------------- gates against vanishing

def gru_state_jacobian_norm(z_bias, rng, T=50, U=32):
    """Norm of dh_T/dh_0 for a GRU with random weights (as chapter 4's table, inputs of
    size 1), with z_bias added to the update gate's bias: large z_bias keeps z near 1."""
    kernel = rng.normal(0, 1 / np.sqrt(U), (U, 3 * U))
    recurrent_kernel = rng.normal(0, 1 / np.sqrt(U), (U, 3 * U))
    bias = np.zeros((2, 3 * U))
    bias[0, :U] = z_bias
    x, h0 = rng.normal(size=(1, T, U)), np.zeros((1, U))
    # Back-propagate each unit vector e_j from h_T: row j of the result is e_j·dh_T/dh_0.
    hs, steps = gru_forward(np.repeat(x, U, axis=0), np.repeat(h0, U, axis=0), kernel, recurrent_kernel, bias)
    dhs = np.zeros((U, T, U))
    dhs[:, -1] = np.eye(U)
    _, jacobian, *_ = gru_backward(dhs, np.repeat(x, U, axis=0), kernel, recurrent_kernel, steps)  # [U, U]
    return float(np.linalg.norm(jacobian, 2))


def main(fast=False):
    del fast  # every part runs in a second or two: --fast changes nothing here
    rng = np.random.default_rng(0)
    B, T, I, U = 3, 6, 5, 4

    print(f"1. GRU in numpy against keras.layers.GRU(reset_after=True): B={B}, T={T}, I={I}, U={U}")
    check_gru(rng, B, T, I, U)
    print("GRU matches Keras")

    print("\n2. LSTM in numpy against keras.layers.LSTM")
    check_lstm(rng, B, T, I, U)
    print("LSTM matches Keras")

    print("\n3. Gates against vanishing: the norm of dh_T/dh_0 over T = 50 steps, GRU, inputs of size 1")
    norms = {}
    for z_bias in (0.0, 2.0, 4.0, 6.0):
        norms[z_bias] = gru_state_jacobian_norm(z_bias, np.random.default_rng(1))
        print(f"  update-gate bias {z_bias:3}: z ≈ σ(bias) = {sigmoid(z_bias):.3f}   norm {norms[z_bias]:.2e}")
    values = list(norms.values())
    assert all(a < b for a, b in zip(values, values[1:])), "a more open copy path should keep more gradient"
    assert norms[6.0] > 0.1, "with z near 1 the gradient should survive 50 steps"
    print("the update gate keeps the gradient alive")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
