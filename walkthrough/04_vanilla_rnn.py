"""Chapter 4: a vanilla RNN in numpy, with backpropagation through time by hand.

A recurrent network reads a sequence one element at a time and keeps a state
h_t, a vector of H numbers that sums up what it has read so far. Here the
elements are characters, each fed as a one-hot column vector x_t (V entries,
all 0 except a 1 at the character's code). One step:

    a_t = W_hh·h_{t-1} + W_xh·x_t + b_h          H numbers, h_0 given (zeros at the start)
    h_t = tanh(a_t)                               the new state
    y_t = W_hy·h_t + b_y                          V logits, one score per character
    p_t = softmax(y_t),  p_t[i] = exp(y_t[i]) / sum_j exp(y_t[j])
    L   = sum_t -log p_t[c_t]                     c_t: the character that follows x_t

The loss L is summed over the time steps. The same five weight arrays are used
at every step (chapter 2's shared weight), so their gradients are sums over
the steps. Backpropagation through time (BPTT) is chapter 2's backward pass on
the unrolled graph, from t = T down to 1 (⊙ multiplies element by element):

    dy_t = p_t - onehot(c_t)                      dL/dy_t, the softmax-cross-entropy gradient
    dh_t = W_hyᵀ·dy_t + W_hhᵀ·da_{t+1}            h_t feeds y_t and a_{t+1} (no a_{T+1} term at t = T)
    da_t = (1 - h_t²) ⊙ dh_t                      tanh'(a) = 1 - tanh(a)²
    dW_hy += dy_t·h_tᵀ    db_y += dy_t
    dW_hh += da_t·h_{t-1}ᵀ    dW_xh += da_t·x_tᵀ    db_h += da_t

The code runs B sequences side by side: each vector becomes a matrix with one
column per sequence ([H, B], [V, B]), and the loss and the bias gradients
sum over the columns too. Both checks of chapter 1 confirm the gradients: central finite
differences in float64, entry by entry, and tf.GradientTape on the same loss.

Why gradients vanish or explode. By the chain rule, the state at step T
depends on the state at step 0 through the product of the steps' Jacobians:

    dh_T/dh_0 = D_T·W_hh · D_{T-1}·W_hh ··· D_1·W_hh,   D_t = diag(1 - h_t²)

Take W_hh = s·Q with Q orthogonal (it turns vectors without stretching them):
while the state stays near 0, every D_t is the identity and the norm of the
product is exactly s^T, which for T = 50 is 5e-3 at s = 0.9 and 6e8 at s = 1.5.
tanh's slope is at most 1, so with inputs the norm is at most s^T, and a
saturated unit (|a| large, slope near 0) passes almost nothing: with inputs of
size 1 the product vanishes even at s = 1.5 (the table in part 4). A
vanishing product means the loss at step T cannot teach the weights anything
about step 0; an exploding one throws the weights far in one update. Gradient
clipping tames the second: when the norm of all gradients together exceeds c,
every gradient is multiplied by c / norm, which keeps the direction. That is
`rnn_train.py --clip-norm 5` (tf.clip_by_global_norm in `training.py`).
Against vanishing, clipping does nothing; gates do (chapter 5).

In this project, `rnn_train.py --cell rnn` builds this cell (`fused.py`, `_rnn_step`), in
Keras's row-vector layout: h_t = tanh(x_t·kernel + h_{t-1}·recurrent_kernel + bias)
with kernel = W_xhᵀ and recurrent_kernel = W_hhᵀ, and its readout is the same
y_t with W_hyᵀ. Chapter 6 trains this chapter's code on a text.

    python3 walkthrough/04_vanilla_rnn.py [--fast]     # a few seconds; --fast runs the same

Previous: 03_gradient_descent.py.  Next: 05_gates.py.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, for checking.py
from checking import check  # noqa: E402  compares a result with the known one, and prints it

NAMES = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


# ---------------------------------------------------------------- the model

def init_params(vocab_size, hidden_size, rng, scale=0.1):
    """Small random weights, zero biases, float64."""
    H, V = hidden_size, vocab_size
    return {
        "W_xh": rng.normal(0, scale, (H, V)),
        "W_hh": rng.normal(0, scale, (H, H)),
        "b_h": np.zeros(H),
        "W_hy": rng.normal(0, scale, (V, H)),
        "b_y": np.zeros(V),
    }


def one_hot(ids, size):
    """[size, B]: column b is 1 at row ids[b], 0 elsewhere."""
    x = np.zeros((size, len(ids)))
    x[ids, np.arange(len(ids))] = 1.0
    return x


def softmax(y):
    """Softmax of each column of y [V, B]. Subtracting the column's maximum first
    changes nothing mathematically and keeps exp() from overflowing."""
    e = np.exp(y - y.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def rnn_step(params, h, x):
    """One step: state h [H, B] and one-hot input x [V, B] -> new state [H, B], logits [V, B]."""
    h = np.tanh(params["W_hh"] @ h + params["W_xh"] @ x + params["b_h"][:, None])  # [H, B]
    y = params["W_hy"] @ h + params["b_y"][:, None]  # [V, B]
    return h, y


def loss_and_grads(params, inputs, targets, h0):
    """The summed loss L, its gradients (a dict like params) and the last state.

    inputs, targets: [B, T] character codes (targets[:, t] follows inputs[:, t]);
    h0: [H, B], the state before the first step.
    """
    V = params["W_hy"].shape[0]
    B, T = inputs.shape
    cols = np.arange(B)
    xs, hs, ps = [], [h0], []  # hs[t + 1] is the state after step t
    loss = 0.0
    for t in range(T):
        xs.append(one_hot(inputs[:, t], V))  # [V, B]
        h, y = rnn_step(params, hs[-1], xs[-1])  # [H, B], [V, B]
        hs.append(h)
        ps.append(softmax(y))
        loss -= np.log(ps[-1][targets[:, t], cols]).sum()

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    da_next = np.zeros_like(h0)  # da_{t+1}, zero after the last step
    for t in reversed(range(T)):
        dy = ps[t].copy()  # [V, B]
        dy[targets[:, t], cols] -= 1.0  # p_t - onehot(c_t)
        dh = params["W_hy"].T @ dy + params["W_hh"].T @ da_next  # [H, B]
        da = (1.0 - hs[t + 1] ** 2) * dh
        grads["W_hy"] += dy @ hs[t + 1].T  # [V, H]
        grads["b_y"] += dy.sum(axis=1)
        grads["W_hh"] += da @ hs[t].T  # [H, H]
        grads["W_xh"] += da @ xs[t].T  # [H, V]
        grads["b_h"] += da.sum(axis=1)
        da_next = da
    return loss, grads, hs[-1]


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients by max_norm / norm when their joint norm exceeds max_norm.
    Returns (clipped grads, the norm before clipping)."""
    norm = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {name: g * scale for name, g in grads.items()}, norm


# ---------------------------------------------------------------- the checks

def gradient_check(loss_fn, params, grads, eps=1e-6, tol=1e-6):
    """Compare grads with central differences (L(w + eps) - L(w - eps)) / (2 eps),
    for every entry of every array of params; raise AssertionError on a mismatch.

    loss_fn(params) -> L. In float64 the difference quotient is off by about
    eps²·|L'''| (1e-12) plus rounding of about 1e-16·|L| / eps (1e-9 for L near 10),
    so tol = 1e-6 of the largest gradient leaves a margin of 1000x, and a wrong
    formula, off by a percent or more, still fails by orders of magnitude.
    """
    for name in params:
        p = params[name]
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + eps
            up = loss_fn(params)
            p[i] = saved - eps
            down = loss_fn(params)
            p[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        check(f"dL/d{name} against finite differences", grads[name], numeric, tol)


def tensorflow_loss_and_grads(params, inputs, targets, h0):
    """The same loss written with TensorFlow ops; tf.GradientTape differentiates it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs: errors only
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from charrnn import tf_setup  # noqa: E402  the project's quiet import: it hides TensorFlow's start-up lines
    tf_setup.import_tensorflow()
    import tensorflow as tf  # imported here, so that chapter 6 can reuse this file without it

    V = params["W_hy"].shape[0]
    w = {name: tf.Variable(p) for name, p in params.items()}  # float64, like params
    with tf.GradientTape() as tape:
        h, loss = tf.constant(h0), tf.constant(0.0, tf.float64)
        for t in range(inputs.shape[1]):
            x = tf.one_hot(inputs[:, t], V, axis=0, dtype=tf.float64)  # [V, B]
            h = tf.tanh(w["W_hh"] @ h + w["W_xh"] @ x + w["b_h"][:, None])  # [H, B]
            y = w["W_hy"] @ h + w["b_y"][:, None]  # [V, B]
            loss += tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(targets[:, t], tf.transpose(y)))
    grads = tape.gradient(loss, w)
    return float(loss), {name: g.numpy() for name, g in grads.items()}


def state_jacobian_norm(W_hh, drive):
    """Norm of dh_T/dh_0 for h_t = tanh(W_hh·h_{t-1} + drive[t]), from h_0 = 0.

    drive: [T, H], what the inputs add at each step (W_xh·x_t + b_h). The norm is
    the largest factor by which the product stretches a vector (its largest
    singular value)."""
    h = np.zeros(W_hh.shape[0])
    jacobian = np.eye(W_hh.shape[0])  # dh_0/dh_0
    for d in drive:
        h = np.tanh(W_hh @ h + d)
        jacobian = (1.0 - h**2)[:, None] * W_hh @ jacobian  # D_t·W_hh·(dh_{t-1}/dh_0)
    return float(np.linalg.norm(jacobian, 2))


# ---------------------------------------------------------------- the story

def main(fast=False):
    del fast  # every part runs in a second or two: --fast changes nothing here
    rng = np.random.default_rng(0)
    V, H, B, T = 6, 8, 3, 5  # small, so the finite differences take milliseconds
    params = init_params(V, H, rng, scale=0.5)  # larger weights than training uses, so tanh bends
    inputs = rng.integers(0, V, (B, T))  # [B, T]
    targets = rng.integers(0, V, (B, T))
    h0 = rng.normal(0, 0.5, (H, B))  # a carried state, as in chapter 6

    print("1. Forward and backward through time")
    loss, grads, h_last = loss_and_grads(params, inputs, targets, h0)
    print(f"  {B} sequences of {T} characters, V={V}, H={H}: L = {loss:.4f} nats "
          f"(uniform guessing would give {B * T * np.log(V):.4f}); last state {h_last.shape}")
    for name in NAMES:
        print(f"  dL/d{name:4} shape {grads[name].shape}")

    print("\n2. Gradient check against finite differences (float64)")
    gradient_check(lambda p: loss_and_grads(p, inputs, targets, h0)[0], params, grads)
    print("gradient check passed")

    print("\n3. The same loss and gradients from tf.GradientTape")
    tf_loss, tf_grads = tensorflow_loss_and_grads(params, inputs, targets, h0)
    # Same formulas in float64, summed in another order: differences of ~1e-15.
    check("L against TensorFlow", loss, tf_loss, 1e-12)
    for name in NAMES:
        check(f"dL/d{name} against TensorFlow", grads[name], tf_grads[name], 1e-12)
    print("TensorFlow agrees")

    print("\n4. Vanishing and exploding: the norm of dh_T/dh_0 over T = 50 steps, W_hh = s·Q")
    H_big, T_big = 32, 50
    Q, _ = np.linalg.qr(rng.normal(size=(H_big, H_big)))  # orthogonal: all singular values 1
    drives = {  # what the inputs add at each step, [T, H]
        "no input": np.zeros((T_big, H_big)),
        "small inputs": rng.normal(0, 0.1, (T_big, H_big)),
        "inputs ~ 1": rng.normal(0, 1.0, (T_big, H_big)),
    }
    scales = (0.5, 0.9, 1.0, 1.1, 1.5, 2.0)
    norms = {s: [state_jacobian_norm(s * Q, drive) for drive in drives.values()] for s in scales}
    print("      s      s^T    " + "".join(f"{label:>14}" for label in drives))
    for s in scales:
        print(f"  {s:5.1f}  {s**T_big:9.1e}" + "".join(f"{n:14.1e}" for n in norms[s]))
    for s in scales:
        still, *driven = norms[s]
        # No input: the state stays 0, tanh' = 1, the product is (sQ)^T exactly; only
        # rounding in 50 matmuls (~1e-14) separates it from s^T.
        check(f"s={s}: with no input the norm is s^T", still, s**T_big, 1e-9)
        # tanh' <= 1 can only shrink the product (1e-9 of slack for rounding).
        assert all(n <= s**T_big * (1 + 1e-9) for n in driven), f"s={s}: a norm above s^T"
    print("vanishing below s = 1, exploding above it, shown")

    print("\n5. Gradient clipping keeps the direction and bounds the norm")
    big = {name: g * 1000.0 for name, g in grads.items()}  # an exploded gradient
    clipped, norm = clip_by_global_norm(big, 5.0)
    new_norm = np.sqrt(sum(np.sum(g * g) for g in clipped.values()))
    print(f"  norm {norm:.1f} -> {new_norm:.1f}")
    check("clipped norm is 5", new_norm, 5.0, 1e-12)  # a rescaling: exact but for rounding
    for name in NAMES:
        check(f"{name}: clipped gradient is the old one times 5/norm", clipped[name], big[name] * 5.0 / norm, 1e-12)
    small, _ = clip_by_global_norm(grads, 1e6)
    assert all(np.array_equal(small[n], grads[n]) for n in NAMES), "a gradient below the limit must not change"
    print("clipping checked")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
