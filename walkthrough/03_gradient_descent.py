"""Chapter 3: gradient descent.

To find the x where f is smallest, start anywhere and repeat

    x <- x - η·f'(x)

a small step downhill; η, the learning rate, sets the step's size. For
f(x) = (x - 3)² + 1, f'(x) = 2(x - 3) and the step gives
x - 3 <- (1 - 2η)·(x - 3): the distance to the minimum at 3 shrinks by the
factor |1 - 2η| at every step (η = 0.1: by 0.8), is gone in one step at
η = 0.5, and grows when the factor passes 1 (η = 1.1: by 1.2).

With several variables, f' becomes the gradient ∇f of chapter 1, and the step
is x <- x - η·∇f(x) for all coordinates at once. For
f(x, y) = (x - 1)² + 10·(y + 2)², ∇f = (2(x - 1), 20(y + 2)), so the errors
shrink by |1 - 2η| along x and by |1 - 20η| along y: the steep direction
caps η below 0.1, and at such an η the shallow direction crawls. That is
why the project trains with Adam (chapter 6), which scales the step of every
weight by the size of its recent gradients.

Last, a classifier. Each point x (2 numbers) has a label y, 0 or 1; logistic
regression predicts p = σ(w·x + b), with σ(a) = 1 / (1 + e^-a), the
probability that y = 1, and is trained by gradient descent on the mean
cross-entropy over the N points,

    L = -(1/N) sum_n [y_n·ln p_n + (1 - y_n)·ln(1 - p_n)]
    ∂L/∂w = (1/N) sum_n (p_n - y_n)·x_n,   ∂L/∂b = (1/N) sum_n (p_n - y_n)

(by the chain rule, with σ' = σ(1 - σ)). The character model of chapters
4 to 6 ends the same way, with V classes instead of 2: its readout
y_t = W_hy·h_t + b_y followed by a softmax is this classifier on the state
h_t, and its gradient has the same form, p - onehot(target).

    python3 walkthrough/03_gradient_descent.py [--fast]     # under a second; --fast runs the same

Previous: 02_autodiff.py.  Next: 04_vanilla_rnn.py.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, for checking.py
from checking import check  # noqa: E402  compares a result with the known one, and prints it


def descend(gradient, start, lr, steps):
    """Gradient descent from start; returns every point visited, [steps + 1, ...]."""
    points = [np.asarray(start, np.float64)]
    for _ in range(steps):
        points.append(points[-1] - lr * gradient(points[-1]))
    return np.array(points)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def logistic_loss_and_grads(w, b, X, y):
    """Mean cross-entropy of p = σ(X·w + b), and its gradients. X [N, 2], y [N] of 0 and 1."""
    p = sigmoid(X @ w + b)  # [N]
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return loss, X.T @ (p - y) / len(y), np.mean(p - y)  # loss, [2], scalar


def main(fast=False):
    del fast  # every part runs in under a second: --fast changes nothing here

    print("1. f(x) = (x - 3)² + 1 from x = 0; x - 3 is multiplied by 1 - 2η at each step")
    for lr in (0.1, 0.5, 1.1):
        xs = descend(lambda x: 2 * (x - 3), 0.0, lr, 50)  # [51]
        print(f"  η = {lr}: x after 1, 2, 3 steps {np.round(xs[1:4], 4).tolist()}, after 50: {xs[-1]:.6g}")
        # x_k - 3 = -3·(1 - 2η)^k, up to rounding (1e-16 of the largest |x|, ~1e-15 here).
        check(f"η = {lr}: x_k - 3 = -3·(1 - 2η)^k for k = 0..50", xs - 3, -3 * (1 - 2 * lr) ** np.arange(51), 1e-9)
    print("one-variable descent checked")

    print("\n2. f(x, y) = (x - 1)² + 10·(y + 2)² from (0, 0): the y direction is 10 times steeper")
    gradient = lambda v: np.array([2 * (v[0] - 1), 20 * (v[1] + 2)])  # noqa: E731
    for lr in (0.09, 0.11):
        path = descend(gradient, [0.0, 0.0], lr, 100)  # [101, 2]
        k = np.arange(101)
        print(f"  η = {lr}: after 10 steps {np.round(path[10], 4).tolist()}, after 100 {np.round(path[100], 4).tolist()}")
        want = np.stack([1 - (1 - 2 * lr) ** k, -2 + 2 * (1 - 20 * lr) ** k], axis=1)  # the two shrink factors
        check(f"η = {lr}: the path follows the factors 1 - 2η and 1 - 20η", path, want, 1e-9)
    assert np.abs(descend(gradient, [0.0, 0.0], 0.09, 100)[-1] - [1, -2]).max() < 1e-6, "η = 0.09 converges"
    assert np.abs(descend(gradient, [0.0, 0.0], 0.11, 100)[-1, 1]).max() > 1e6, "η = 0.11 diverges along y"
    print("η = 0.09 converges, η = 0.11 diverges: the steepest direction sets the limit")

    print("\n3. Logistic regression on two clouds of points")
    rng = np.random.default_rng(0)
    N = 200
    y = (np.arange(N) < N // 2).astype(np.float64)  # [N]: 100 of class 1, 100 of class 0
    centres = np.where(y[:, None] == 1, [1.2, 0.8], [-1.2, -0.8])  # [N, 2]
    X = centres + rng.normal(size=(N, 2))  # [N, 2]
    w, b = np.zeros(2), 0.0

    loss, dw, db = logistic_loss_and_grads(w, b, X, y)
    eps = 1e-6
    numeric = [(logistic_loss_and_grads(w + eps * e, b, X, y)[0] - logistic_loss_and_grads(w - eps * e, b, X, y)[0]) / (2 * eps)
               for e in np.eye(2)]
    numeric.append((logistic_loss_and_grads(w, b + eps, X, y)[0] - logistic_loss_and_grads(w, b - eps, X, y)[0]) / (2 * eps))
    # Central differences in float64: error ~eps² + 1e-16·L / eps ≈ 1e-10 (chapter 1).
    check("∂L/∂(w, b) against finite differences", [*dw, db], numeric, 1e-7)

    # L's curvature is at most the largest eigenvalue of [X 1]ᵀ[X 1] / (4N); any η below
    # 2 / curvature lowers L at every step.
    X1 = np.hstack([X, np.ones((N, 1))])  # [N, 3]
    lr, limit = 0.5, 2 / (np.linalg.eigvalsh(X1.T @ X1 / (4 * N)).max())
    print(f"  η = {lr} (every step lowers L for η < {limit:.2f})")
    assert lr < limit
    losses = []
    for step in range(301):
        loss, dw, db = logistic_loss_and_grads(w, b, X, y)
        losses.append(loss)
        if step % 50 == 0:
            print(f"  step {step:3d}: L = {loss:.4f}")
        w, b = w - lr * dw, b - lr * db
    accuracy = np.mean((sigmoid(X @ w + b) > 0.5) == (y == 1))
    print(f"  w = {np.round(w, 3).tolist()}, b = {b:.3f}, accuracy {accuracy:.1%}")
    assert all(a > b for a, b in zip(losses, losses[1:])), "the loss falls at every step"
    assert losses[-1] < 0.5 * losses[0], f"the loss should at least halve from ln 2 = {losses[0]:.3f}"
    # The clouds' centres are 2.9 standard deviations apart: the best line gets about 93% right.
    assert accuracy > 0.88, f"accuracy {accuracy:.1%}"
    print("logistic regression trained")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
