"""Chapter 1: derivatives, three ways.

From a derivative to this project's GRU, in six chapters. Each is a Python
script that runs on its own in seconds on a CPU, prints what it shows, and
checks it: a check that fails raises AssertionError. Run them from the
repository root or from inside walkthrough/:

    01_derivatives.py       derivatives by hand, by finite differences, by tf.GradientTape
    02_autodiff.py          a tiny reverse-mode automatic differentiation, checked against TensorFlow
    03_gradient_descent.py  minimising functions; a logistic-regression classifier
    04_vanilla_rnn.py       a recurrent network in numpy, backpropagation through time by hand
    05_gates.py             the GRU and LSTM cells by hand, checked against Keras
    06_char_model.py        training a character model: batches, sampling, the project's rnn_train.py

    python3 walkthrough/01_derivatives.py [--fast]

--fast is what the tests use (test_walkthrough.py); it only shortens
chapter 6's training, as the others already take a few seconds.

The derivative of a function f at x is the slope of its graph there:

    f'(x) = limit, as h goes to 0, of (f(x + h) - f(x)) / h

This chapter takes the polynomial

    p(x) = 3x³ - 2x² + 5x - 7

and finds p'(2) three ways:

1. By hand, with the power rule (the derivative of xⁿ is n·xⁿ⁻¹, and the
   derivative of a sum is the sum of the derivatives):
   p'(x) = 9x² - 4x + 5, so p'(2) = 36 - 8 + 5 = 33.

2. By finite differences: evaluate p at two nearby points and divide. The
   forward difference (p(x + h) - p(x)) / h is off by about h·p''(x)/2; the
   central difference (p(x + h) - p(x - h)) / (2h) is off by about h²·p'''(x)/6.
   For a cubic both are exact formulas: p''(2) = 18·2 - 4 = 32 and p''' = 18, so
   the forward difference is 33 + 16h + 3h² and the central one 33 + 3h².
   Smaller h is better, until the subtraction of two nearly equal numbers
   loses the digits that matter: the rounding error grows like 1e-16·|p| / h.

3. By automatic differentiation: `tf.GradientTape` records the operations
   that compute p(x) and applies the chain rule to them backwards (chapter 2
   builds such a thing). It is exact up to rounding, with no h to choose. The
   project's training step (`training.py`) gets all its gradients this way.

Then a function of several variables, f(x, y) = x²·y + 3y² - 2x. Its partial
derivatives hold the other variable fixed: ∂f/∂x = 2xy - 2, ∂f/∂y = x² + 6y.
Together they form the gradient ∇f = (∂f/∂x, ∂f/∂y), the direction in which f
grows fastest; a small step against it lowers f, which is chapter 3's idea.
Last, the chain rule, which chapter 2 is built on: the derivative of
f(g(x)) is f'(g(x))·g'(x); for tanh(p(x) / 50) that is
(1 - tanh²(p(x) / 50))·p'(x) / 50.

Next: 02_autodiff.py.
"""

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs: errors only
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from charrnn import tf_setup  # noqa: E402  the project's quiet import: it hides TensorFlow's start-up lines
tf_setup.import_tensorflow()
import tensorflow as tf  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, for checking.py
from checking import check  # noqa: E402  compares a result with the known one, and prints it


def p(x):
    """3x³ - 2x² + 5x - 7, for a number or a TensorFlow tensor alike."""
    return 3 * x**3 - 2 * x**2 + 5 * x - 7


def p_prime(x):
    """p'(x) by the power rule."""
    return 9 * x**2 - 4 * x + 5


def f(x, y):
    return x**2 * y + 3 * y**2 - 2 * x


def f_gradient(x, y):
    """(∂f/∂x, ∂f/∂y) by hand."""
    return np.array([2 * x * y - 2, x**2 + 6 * y])


def main(fast=False):
    del fast  # every part runs in a second or two: --fast changes nothing here
    x = 2.0

    print("1. By hand: p'(x) = 9x² - 4x + 5")
    by_hand = p_prime(x)
    print(f"  p'(2) = {by_hand}")
    assert by_hand == 33.0

    print("\n2. By finite differences, in float64")
    print("         h    forward difference    central difference")
    for h in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-12):
        forward = (p(x + h) - p(x)) / h
        central = (p(x + h) - p(x - h)) / (2 * h)
        print(f"  {h:8.0e}    {forward:18.12f}    {central:18.12f}")
    for h in (1e-1, 1e-2, 1e-3):
        # The exact errors of a cubic, 16h + 3h² and 3h². What remains is rounding,
        # about 1e-16·|p(2)| / h = 2e-12 at most here: 1e-9 relative is safe.
        check(f"forward difference at h={h:.0e} is 33 + 16h + 3h²", (p(x + h) - p(x)) / h, 33 + 16 * h + 3 * h * h, 1e-9)
        check(f"central difference at h={h:.0e} is 33 + 3h²", (p(x + h) - p(x - h)) / (2 * h), 33 + 3 * h * h, 1e-9)
    error_good = abs((p(x + 1e-6) - p(x - 1e-6)) / 2e-6 - 33)
    error_tiny_h = abs((p(x + 1e-12) - p(x - 1e-12)) / 2e-12 - 33)
    print(f"  central difference error at h = 1e-6: {error_good:.1e}; at h = 1e-12: {error_tiny_h:.1e} (rounding)")
    assert error_tiny_h > 100 * error_good, "too small an h should lose to rounding"
    finite = (p(x + 1e-6) - p(x - 1e-6)) / 2e-6

    print("\n3. By tf.GradientTape")
    x_tf = tf.Variable(x, dtype=tf.float64)
    with tf.GradientTape() as tape:
        y = p(x_tf)  # the tape records each operation
    taped = float(tape.gradient(y, x_tf))
    print(f"  p'(2) = {taped}")
    check("GradientTape equals the power rule", taped, by_hand, 1e-15)  # exact but for rounding
    # The central difference at h = 1e-6 is off by 3h² = 3e-12 plus rounding ~1e-10.
    check("finite differences equal the power rule", finite, by_hand, 1e-8)
    print("hand, finite differences and tf.GradientTape agree")

    print("\n4. Several variables: f(x, y) = x²·y + 3y² - 2x at (x, y) = (1.5, -0.5)")
    point = np.array([1.5, -0.5])
    by_hand = f_gradient(*point)
    h = 1e-6
    finite = np.array([(f(point[0] + h, point[1]) - f(point[0] - h, point[1])) / (2 * h),
                       (f(point[0], point[1] + h) - f(point[0], point[1] - h)) / (2 * h)])
    xy = tf.Variable(point)  # float64, like the numpy array
    with tf.GradientTape() as tape:
        value = f(xy[0], xy[1])
    taped = tape.gradient(value, xy).numpy()  # [2]: both partial derivatives at once
    print(f"  by hand {by_hand}, finite differences {finite}, GradientTape {taped}")
    check("∇f: GradientTape against hand", taped, by_hand, 1e-15)
    check("∇f: finite differences against hand", finite, by_hand, 1e-8)  # as in part 3
    step = point - 0.01 * by_hand
    print(f"  f at the point {f(*point):.6f}; after a step of 0.01 against the gradient {f(*step):.6f}")
    assert f(*step) < f(*point), "a small step against the gradient lowers f"

    print("\n5. The chain rule: d/dx tanh(p(x) / 50) = (1 - tanh²(p(x) / 50))·p'(x) / 50")
    by_hand = (1 - np.tanh(p(x) / 50) ** 2) * p_prime(x) / 50
    with tf.GradientTape() as tape:
        value = tf.tanh(p(x_tf) / 50)
    check("chain rule: GradientTape against hand", float(tape.gradient(value, x_tf)), by_hand, 1e-14)
    print("all checks passed")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
