"""Chapter 2: reverse-mode automatic differentiation in a few dozen lines.

Any formula a program computes is a chain of small operations. Write each
intermediate result as a node of a graph that remembers the nodes it was made
from and the local derivatives, the derivative of the result with respect to
each input of its operation:

    c = a + b      dc/da = 1,  dc/db = 1
    c = a · b      dc/da = b,  dc/db = a
    c = tanh(a)    dc/da = 1 - tanh(a)² = 1 - c²

The forward pass computes the values and builds the graph. The backward pass
finds dL/dn for every node n, for the final result L: it sets dL/dL = 1 and
visits the nodes from L back to the inputs, each after every node that uses
it, and for each input i of a node n adds

    dL/di += (dn/di) · dL/dn                     (the chain rule of chapter 1)

The "+=" is the whole story of weight sharing: a value used in two places
(x·x, or a weight used at every time step of an RNN) receives one
contribution per use, and its derivative is their sum. For f(x) = x·x + 3·x:
the node x·x passes back x + x (x is both of its inputs) and 3·x passes back
3, so df/dx = 2x + 3.

`Value` below is such a node, with the three operations above (subtraction is
a + (-1)·b). The same expressions are then given to TensorFlow, whose
`tf.GradientTape` does the same thing for every TensorFlow operation, and the
gradients must agree. This is the machinery behind every gradient in the
project: `training.py` computes its loss under a GradientTape, and `fused.py`
(`_gru_training`) replaces the tape's backward pass for the GRU's loop with
one written by hand (chapter 5), which needs fewer operations than the
recorded graph.

    python3 walkthrough/02_autodiff.py [--fast]     # a few seconds; --fast runs the same

Previous: 01_derivatives.py.  Next: 03_gradient_descent.py.
"""

import math
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


class Value:
    """A number in a computation graph: its value (data), the nodes it was computed
    from (parents), d(this)/d(parent) for each (local_grads), and after backward(),
    dL/d(this) (grad)."""

    def __init__(self, data, parents=(), local_grads=()):
        self.data, self.parents, self.local_grads = float(data), parents, local_grads
        self.grad = 0.0

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1.0, 1.0))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def tanh(self):
        t = math.tanh(self.data)
        return Value(t, (self,), (1.0 - t * t,))

    __radd__, __rmul__ = __add__, __mul__  # 3 + v and 3 * v

    def __sub__(self, other):
        return self + (-1.0) * other

    def backward(self):
        """Set .grad = d(self)/d(node) on every node that self was computed from."""
        order, seen = [], set()

        def visit(node):  # depth first: every node lands after the nodes it was made from
            if id(node) not in seen:
                seen.add(id(node))
                for parent in node.parents:
                    visit(parent)
                order.append(node)

        visit(self)
        self.grad = 1.0
        for node in reversed(order):  # from the result back to the inputs
            for parent, local in zip(node.parents, node.local_grads):
                parent.grad += local * node.grad  # the chain rule; += sums over the uses


# The expressions take tanh as an argument, so the same code runs on Values and on tensors.

def square_plus(x, tanh):
    """x·x + 3·x: x is used three times."""
    return x * x + 3 * x


def neuron(w1, w2, b, x1, x2, tanh):
    """One artificial neuron: tanh(w1·x1 + w2·x2 + b)."""
    return tanh(w1 * x1 + w2 * x2 + b)


def tiny_rnn_loss(w, u, b, xs, targets, tanh):
    """A one-number RNN, h_t = tanh(w·h_{t-1} + u·x_t + b) from h_0 = 0, and the loss
    L = sum_t (h_t - target_t)². w, u and b are shared by every step."""
    h, loss = 0.0, 0.0
    for x, target in zip(xs, targets):
        h = tanh(w * h + u * x + b)
        loss = loss + (h - target) * (h - target)
    return loss


def ours_and_tensorflow(name, expression, inputs, constants=()):
    """Differentiate expression(*inputs, *constants) with Value and with tf.GradientTape,
    and check that the values and the gradients with respect to inputs agree."""
    values = [Value(v) for v in inputs]
    result = expression(*values, *constants, tanh=Value.tanh)
    result.backward()
    ours = [v.grad for v in values]

    variables = [tf.Variable(v, dtype=tf.float64) for v in inputs]
    with tf.GradientTape() as tape:
        tf_result = expression(*variables, *constants, tanh=tf.tanh)
    theirs = [float(g) for g in tape.gradient(tf_result, variables)]

    print(f"  {name}: value {result.data:.6f}, gradient {np.round(ours, 6).tolist()}")
    # Both compute in float64 with the same operations; tanh's last bits may differ
    # between libraries (1e-16), which a few chained steps grow to ~1e-15.
    check(f"{name}: value against TensorFlow", result.data, float(tf_result), 1e-12)
    check(f"{name}: gradient against TensorFlow", ours, theirs, 1e-12)
    return ours


def main(fast=False):
    del fast  # every part runs in a second or two: --fast changes nothing here

    print("1. A value used twice: f(x) = x·x + 3·x at x = 2, so df/dx = 2x + 3 = 7")
    x = Value(2.0)
    f = square_plus(x, Value.tanh)
    f.backward()
    print(f"  forward: f = {f.data}; backward: df/dx = {x.grad}")
    assert x.grad == 7.0, "x·x passes back 2 + 2 and 3·x passes back 3"

    print("\n2. Our autodiff against tf.GradientTape")
    grads = ours_and_tensorflow("x·x + 3·x", square_plus, [2.0])
    check("x·x + 3·x: gradient against 2x + 3", grads, [7.0], 0.0)  # small integers: exact
    w1, w2, b, x1, x2 = 0.5, -1.5, 0.1, 2.0, 0.3
    grads = ours_and_tensorflow("tanh(w1·x1 + w2·x2 + b)", neuron, [w1, w2, b], (x1, x2))
    slope = 1 - math.tanh(w1 * x1 + w2 * x2 + b) ** 2  # chapter 1's chain rule, by hand
    check("neuron: gradient against the chain rule by hand", grads, [slope * x1, slope * x2, slope], 1e-15)
    ours_and_tensorflow("tiny RNN, 4 steps, w u b shared", tiny_rnn_loss, [0.8, 0.5, -0.1],
                        ([1.0, -0.5, 0.25, 2.0], [0.2, -0.1, 0.3, 0.6]))
    print("our autodiff agrees with TensorFlow")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
