"""Chapter 6: training a character model.

A character model reads text and, after each character, gives a probability
to every possible next character. Training lowers the mean of
-log p(the actual next character) over the text, in nats per character; a
model that knows nothing spreads its bets evenly and scores ln V, for V
characters in the vocabulary. This chapter trains chapter 4's RNN (imported
from 04_vanilla_rnn.py) on `sonnets.txt`, eleven of Shakespeare's sonnets
(public domain, modernised spelling, typed for this walkthrough, so a word may
differ from an edition), 6,835 characters, with the project's own text code.

1. Batches (`txt_utils.py`). `read_corpus` encodes the text as integer codes
   (`Vocabulary`; code 0 stands for any character it has not seen) and, for a
   single file, holds out the last 10% for validation. `rnn_minibatch_sequencer`
   cuts the training codes into B rows of equal length and hands out the next T
   columns at each step: x is [B, T], and y, the targets, is x shifted by one
   character. Row i of a batch continues row i of the batch before, so the
   state the RNN ends one batch with is the right state to begin the next with.
   This is truncated backpropagation through time: each step runs chapter 4's
   forward and backward over T characters from the carried state h_0, which it
   treats as a constant, so gradients reach T characters back (`--seqlen`)
   while the state carries context further. Between epochs the rows are rolled
   by one, so that the text still runs on; one row per epoch wraps around.

2. Sampling with temperature (`sampling.py`). To write, feed a character, turn
   the logits y into probabilities p_i = exp(y_i / τ) / sum_j exp(y_j / τ),
   draw the next character from p, and feed it back. τ = 1 samples the model's
   own distribution; τ < 1 sharpens it towards the likeliest character (τ -> 0
   is argmax); τ > 1 flattens it. `sampling.py` draws with the Gumbel-max trick:
   argmax_i (y_i / τ + g_i), with g_i = -ln(-ln u_i) and u_i uniform in (0, 1),
   is a draw from p, and an argmax compiles under XLA, where TensorFlow's
   categorical draw does not. Part 2 checks the trick on 20,000 draws.

3. Training (`training.py` does the same with TensorFlow). A step's loss is the
   mean over its B·T characters, so its gradients are chapter 4's divided by
   B·T; they are clipped to a global norm of 5 and applied with Adam, the
   project's optimizer. Adam keeps running means of each gradient g and of g²,
   m <- 0.9·m + 0.1·g and v <- 0.999·v + 0.001·g², and at step k moves each
   weight by -lr·m̂ / (sqrt(v̂) + 1e-7), where m̂ = m / (1 - 0.9^k) and
   v̂ = v / (1 - 0.999^k) correct the pull towards the zeros m and v start
   from: steps of about lr, whatever the scale of the gradient. The validation
   loss is measured as `training.py` does, reading the held-out text from a
   zero state with the state carried. With 6,151 training characters the model
   soon learns them by heart: in the full run the training loss keeps falling
   while the validation loss turns up after several hundred steps (overfitting),
   which is why the project keeps the best checkpoint apart.

4. What the carried state is worth: the trained model reads text it knows in
   chunks of T, once with the state carried from chunk to chunk and once with
   it reset to zeros before each chunk; the first characters of a chunk cost
   the most when the context is gone.

5. The same job with the project: part 5 prints the `rnn_train.py` command that
   trains a GRU (chapter 5) on the same file, and what the project adds.

    python3 walkthrough/06_char_model.py           # about 10 s: 2,000 training steps
    python3 walkthrough/06_char_model.py --fast    # about 4 s: 800 steps

Previous: 05_gates.py.  Back to the start: 01_derivatives.py.
"""

import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for txt_utils
from txt_utils import read_corpus, rnn_minibatch_sequencer  # noqa: E402

SONNETS = os.path.join(HERE, "sonnets.txt")


def load_chapter(filename):
    """A chapter as a module. Its name starts with a digit, so `import` cannot name it."""
    spec = importlib.util.spec_from_file_location(filename[:-3], os.path.join(HERE, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rnn = load_chapter("04_vanilla_rnn.py")  # init_params, rnn_step, loss_and_grads, clip_by_global_norm, check


# ---------------------------------------------------------------- 1. batches

def show_sequencer():
    """Feed the sequencer 0, 1, 2, ... and check that each batch continues the last."""
    N, B, T, epochs = 40, 3, 4, 2
    batches = list(rnn_minibatch_sequencer(np.arange(N), B, T, epochs))  # (x [B, T], y [B, T], epoch)
    for i in range(B):  # row i of every batch, in order: the text runs on from left to right
        cells = []
        for k, (x, _, epoch) in enumerate(batches):
            if k and epoch != batches[k - 1][2]:
                cells.append("|")
            cells.append("[" + " ".join(f"{v:2d}" for v in x[i]) + "]")
        print(f"  row {i}: " + " ".join(cells))
    print("  (| marks the new epoch: there the last row wraps from the end of the data to its start)")
    for k, (x, y, epoch) in enumerate(batches):
        assert np.array_equal(y, x + 1), "y is x shifted by one character"
        if k == 0:
            continue
        previous, previous_epoch = batches[k - 1][0], batches[k - 1][2]
        rows = B if epoch == previous_epoch else B - 1  # the wrapped row breaks once per epoch
        assert np.array_equal(x[:rows, 0], previous[:rows, -1] + 1), f"batch {k} does not continue batch {k - 1}"
    print("every row continues the text of the same row of the batch before")


# ---------------------------------------------------------------- 2. sampling

def temperature_probs(logits, temperature):
    """p_i = exp(y_i / τ) / sum_j exp(y_j / τ)."""
    z = np.asarray(logits, np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def gumbel_max(logits, temperature, rng, size):
    """size draws of argmax_i(y_i / τ + g_i), g_i = -ln(-ln u_i): sampling.py's `pick`."""
    u = rng.uniform(np.finfo(np.float64).tiny, 1.0, (size, len(logits)))
    return np.argmax(np.asarray(logits) / temperature - np.log(-np.log(u)), axis=1)


def show_temperature(rng):
    logits = np.array([2.0, 1.0, 0.5, -1.0])
    print("  logits", logits)
    entropies = []
    for tau in (0.25, 0.5, 1.0, 2.0):
        p = temperature_probs(logits, tau)
        entropies.append(-np.sum(p * np.log(p)))
        print(f"  τ = {tau:4}: p = {np.round(p, 3)}   entropy {entropies[-1]:.3f} nats")
    assert all(a < b for a, b in zip(entropies, entropies[1:])), "a higher τ gives a flatter distribution"
    assert temperature_probs(logits, 0.01)[0] > 0.999, "τ -> 0 gives argmax"
    n = 20_000
    p = temperature_probs(logits, 1.0)
    freq = np.bincount(gumbel_max(logits, 1.0, rng, n), minlength=len(logits)) / n
    print(f"  Gumbel-max, {n} draws at τ = 1: frequencies {np.round(freq, 3)}")
    # Each frequency has a standard deviation sqrt(p(1-p)/n) <= 0.0036; 5 of them is 0.018.
    assert np.max(np.abs(freq - p)) < 0.018, f"Gumbel-max frequencies {freq} differ from {p}"
    print("temperature and Gumbel-max sampling checked")


def sample(params, vocab, rng, length, temperature, prime="\n"):
    """Generate text: warm the state up on prime, then draw each character from
    p = softmax(y / τ) and feed it back. Code 0, the unknown symbol, is never drawn."""
    H, V = params["W_hh"].shape[0], params["W_hy"].shape[0]
    h = np.zeros((H, 1))
    for code in vocab.encode(prime):
        h, y = rnn.rnn_step(params, h, rnn.one_hot([code], V))  # [H, 1], [V, 1]
    out = []
    for _ in range(length):
        p = temperature_probs(y[:, 0], temperature)
        p[0] = 0.0  # sampling.py bans the unknown symbol the same way
        code = rng.choice(V, p=p / p.sum())
        out.append(code)
        h, y = rnn.rnn_step(params, h, rnn.one_hot([code], V))
    return vocab.decode(out)


# ---------------------------------------------------------------- 3. training

def char_losses(params, codes, T, carry):
    """-log p(next character) for each character of codes read as one row, T characters
    at a time, with the state carried from chunk to chunk or reset to zeros before each.
    Returns an array [n] with n = (len(codes) - 1) rounded down to a multiple of T."""
    H, V = params["W_hh"].shape[0], params["W_hy"].shape[0]
    n = (len(codes) - 1) // T * T
    h, losses = np.zeros((H, 1)), np.empty(n)
    for t in range(n):
        if t % T == 0 and not carry:
            h = np.zeros((H, 1))
        h, y = rnn.rnn_step(params, h, rnn.one_hot(codes[t : t + 1], V))  # [H, 1], [V, 1]
        losses[t] = -np.log(rnn.softmax(y)[codes[t + 1], 0])
    return losses


def validation_loss(params, codes, T):
    """Mean loss in nats/char on held-out text, read from a zero state, as training.py does."""
    return float(char_losses(params, codes, T, carry=True).mean())


class Adam:
    """Adam as in its paper, with keras.optimizers.Adam's defaults (0.9, 0.999, 1e-7).
    Keras adds the 1e-7 to sqrt(v) before the bias correction instead of after: a
    difference only for gradients near 1e-7."""

    def __init__(self, params, lr):
        self.lr, self.k = lr, 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def apply(self, params, grads):
        self.k += 1
        for name, g in grads.items():
            self.m[name] = 0.9 * self.m[name] + 0.1 * g
            self.v[name] = 0.999 * self.v[name] + 0.001 * g * g
            m_hat = self.m[name] / (1 - 0.9**self.k)
            v_hat = self.v[name] / (1 - 0.999**self.k)
            params[name] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-7)


def train(corpus, steps, hidden, batch_size, seqlen, lr, rng, report_every):
    """Train chapter 4's RNN on corpus.train, validating every report_every steps.
    Returns the weights and the (step, training loss, validation loss) reports."""
    V = len(corpus.vocab)
    params = rnn.init_params(V, hidden, rng, scale=0.01)
    adam = Adam(params, lr)
    h = np.zeros((hidden, batch_size))  # [H, B], carried from batch to batch
    batches = rnn_minibatch_sequencer(corpus.train, batch_size, seqlen, nb_epochs=10**6)
    losses, reports = [], []
    for step in range(1, steps + 1):
        x, y, epoch = next(batches)  # [B, T] each
        loss, grads, h = rnn.loss_and_grads(params, x, y, h)
        grads = {name: g / x.size for name, g in grads.items()}  # of the mean loss
        grads, _ = rnn.clip_by_global_norm(grads, 5.0)
        adam.apply(params, grads)
        losses.append(loss / x.size)
        if step % report_every == 0:
            train_loss = float(np.mean(losses[-report_every:]))
            val_loss = validation_loss(params, corpus.valid, seqlen)
            reports.append((step, train_loss, val_loss))
            print(f"  step {step:5d}  epoch {epoch:3d}  training loss {train_loss:.3f}  validation {val_loss:.3f} nats/char")
    return params, reports


def main(fast=False):
    rng = np.random.default_rng(0)

    print("1. The minibatch sequencer on 0, 1, 2, ... (B = 3 rows, T = 4 columns)")
    show_sequencer()

    print("\n2. Sampling with temperature")
    show_temperature(rng)

    print("\n3. A numpy char-RNN learns sonnets.txt")
    corpus = read_corpus(SONNETS, validation="tail")  # what rnn_train.py does with a single file
    V = len(corpus.vocab)
    steps, hidden, batch_size, seqlen, lr = (800 if fast else 2000), 128, 16, 32, 2e-3
    print(f"  {len(corpus.train)} training and {len(corpus.valid)} validation characters, V = {V} "
          f"(uniform guessing: ln V = {np.log(V):.2f} nats/char)")
    print(f"  {steps} steps of B = {batch_size} rows x T = {seqlen} characters, H = {hidden}, Adam lr {lr}")
    params, reports = train(corpus, steps, hidden, batch_size, seqlen, lr, rng, report_every=steps // 8)
    train_losses, val_losses = [r[1] for r in reports], [r[2] for r in reports]
    best_step = reports[int(np.argmin(val_losses))][0]
    print(f"  lowest validation loss {min(val_losses):.3f} at step {best_step}")
    # Limits from runs with this seed, with a margin of about 0.3 nats: the fast run
    # ends near 1.9 (training) with validation near 2.3, the full run near 0.6 with
    # its best validation near 2.3 and its last near 3.6. Uniform guessing is 4.19.
    assert train_losses[-1] < (2.3 if fast else 1.0), f"training loss {train_losses[-1]:.3f} too high"
    assert min(val_losses) < 2.6, f"validation loss {min(val_losses):.3f} too high"
    if not fast:
        assert val_losses[-1] > min(val_losses) + 0.3, "the full run should show overfitting"
        print("  the validation loss turned up while the training loss kept falling: overfitting")
    print("the loss fell")
    text = sample(params, corpus.vocab, rng, 200 if fast else 400, temperature=0.8)
    print("  a sample at τ = 0.8, from a newline and a zero state:\n")
    print("    " + text.replace("\n", "\n    "))

    print("\n4. What the carried state is worth (truncated BPTT)")
    known = corpus.train[:2048]  # text the model was trained on, as 64 chunks of 32
    carried = char_losses(params, known, seqlen, carry=True).reshape(-1, seqlen)  # [chunks, T]
    reset = char_losses(params, known, seqlen, carry=False).reshape(-1, seqlen)
    print("  mean loss at each position of a chunk, nats/char:")
    print("    position:     " + "".join(f"{t:7d}" for t in range(6)) + "   all 32")
    for label, losses in (("state carried", carried), ("state reset", reset)):
        print(f"    {label:14}" + "".join(f"{v:7.2f}" for v in losses.mean(axis=0)[:6]) + f"   {losses.mean():6.2f}")
    # Reset, the first characters of a chunk are guessed without context; carried, they are not.
    assert carried[:, 0].mean() < reset[:, 0].mean() - 0.3, "the carried state should help the first character most"
    assert carried.mean() < reset.mean(), "carrying the state should help overall"
    print("carrying the state helps")

    print("\n5. The same job with this project")
    print("  From the repository root (about half a minute on a 2-core CPU):\n")
    print("  python3 rnn_train.py --data walkthrough/sonnets.txt --layers 1 --units 128 --seqlen 32 \\\n"
          "      --batch-size 16 --dropout 0 --lr 2e-3 --max-steps 2000 --val-every 100 --run sonnets")
    print("  python3 rnn_play.py sonnets --temperature 0.8")
    print("""
  The same batches and the same loss, with a GRU (chapter 5) instead of the
  plain RNN, on TensorFlow. What the project adds:
  - fused kernels (fused.py, _gru_training): the GRU's loop and its
    hand-written backward pass as large TensorFlow ops, fast on a CPU;
  - checkpoints (checkpoints.py) in checkpoints/sonnets/, holding the weights,
    Adam's state, the carried RNN state and the sequencer's position, so that
    --resume continues exactly where a run stopped;
  - validation every --val-every steps, and the best checkpoint kept in best/,
    which is the one to keep when, as here, the validation loss turns up;
  - TensorBoard curves and samples: tensorboard --logdir=log;
  - generation (sampling.py): --temperature, --top-k, --top-p, and --seed for
    repeatable text.""")


if __name__ == "__main__":
    main(fast="--fast" in sys.argv[1:])
