"""The compiled steps: one training step for one device and tf.distribute alike, and validation.

    make_optimizer(cfg, named)     Adam, or AdamW with --weight-decay
    make_train_step(...)           one update on a batch; with a strategy in scope, per replica
    make_validate(model, seqlen)   the held-out text's loss and accuracy, from zero states

How a step divides the work under tf.distribute. Every replica receives the
whole global batch [B, T] and takes its own rows: replica r of R reads rows
[r·B/R, (r+1)·B/R) of the batch and of the carried state. The state stays what
it is on one device, one [B, S] variable per layer (mirrored: every device holds
all rows); after a step the replicas' new rows are gathered in replica order and
every copy takes all of them. So row i of the text continues row i of the state
whatever the replica count, and a checkpoint holds the same tensors as a
single-device run's.

The loss of a replica is the mean over its rows. Its gradients are summed over
the replicas in one all-reduce and divided by R, which is the gradient of the
mean over the global batch, then clipped by their global norm, as on one
device. Keras 3's optimizer, when `apply` runs in a replica context, sums the
gradients across replicas itself, and cannot be told not to. So `apply` runs
after strategy.run, outside strategy.scope(), on the reduced gradient of this
process's first replica (every replica holds the same): there Keras reduces
nothing and writes the update into every device's copy of each variable.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from charrnn import schedule

VAL_ROWS, VAL_ROW_CHARS = 64, 1024  # validation: up to 64 rows, each of at least 1,024 chars when the text allows


def make_optimizer(cfg, named):
    """Adam, or with --weight-decay AdamW: each step also shrinks the weight matrices by
    lr x weight_decay, apart from the gradient (decoupled). Biases and a learned
    embedding are not decayed: pulling them toward zero only biases the model.
    named: the model's variables by name (model.named_variables()); the optimizer is built."""
    if cfg.weight_decay:
        optimizer = keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_list=[v for name, v in named.items() if not decayed(name)])
    else:
        optimizer = keras.optimizers.Adam(cfg.lr)
    optimizer.build(list(named.values()))
    return optimizer


def decayed(name):
    """Whether --weight-decay acts on the variable called name (model.named_variables())."""
    return name.endswith("kernel")


def scheduled_rate(cfg, total, scale=None):
    """rate(step): schedule.learning_rate on tensors, inside the compiled step; total is an
    int64 variable holding the steps the schedule spans (0 while unknown); scale, a float64
    variable or None, multiplies it (plateau.KeepBest's restarts)."""
    def rate(step):
        rate = schedule.learning_rate(cfg, tf.cast(step, tf.float64), tf.cast(total, tf.float64), tnp)
        return tf.cast(rate if scale is None else rate * scale, tf.float32)
    return rate


def state_rows(states, first, rows):
    """A replica's rows [first, first + rows) of each carried state [B, S]."""
    return [_rows(s, first, rows) for s in states]


def _rows(tensor, first, rows):
    return tf.slice(tensor, [first, 0], [rows, tensor.shape[1] or -1])  # [rows, ...], static when known


def make_train_step(model, optimizer, variables, states, clip_norm, loss_scale=None,
                    counter=None, learning_rate=None, window=None):
    """One compiled training step on a batch [B, T]; the carried state lives in `states`.

    Built inside strategy.scope() (with the variables made there), it runs on every
    replica and is called outside the scope; built without a strategy it is a plain call.
    A step whose loss, gradient or updated weights are not finite changes nothing: no
    weight, no optimizer slot, no state. It returns (loss, accuracy, finite) over the batch.
    optimizer: built (make_optimizer builds it). loss_scale: a precision.LossScale for fp16
    (one device only), else None.
    counter: an int64 variable the step adds one to (skipped steps too); learning_rate(step):
    the rate of the update that makes that step, set before it. window: a float64 [3]
    variable that sums the loss, the accuracy and the count of the finite steps, for the log.
    """
    if not optimizer.built:  # its slots must exist now: a non-finite step restores them
        raise ValueError("build the optimizer on the variables first (make_optimizer does)")
    strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    replicas = strategy.num_replicas_in_sync if strategy else 1
    if states[0].shape[0] % replicas:
        raise ValueError(f"a batch of {states[0].shape[0]} rows does not divide among {replicas} replicas")
    rows = states[0].shape[0] // replicas
    kept = list(variables) + list(optimizer.variables)  # what a step may change, states aside

    def gradients(x, y):  # x, y: [B, T]; on each replica with a strategy
        context = tf.distribute.get_replica_context() if strategy else None
        first = context.replica_id_in_sync_group * rows if strategy else 0
        x, y = (_rows(x, first, rows), _rows(y, first, rows)) if strategy else (x, y)  # [B/R, T]
        with tf.GradientTape() as tape:
            logits, new_states = model(x, state_rows(states, first, rows) if strategy else
                                       [s.value() for s in states], training=True)  # [B/R, T, V]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            scaled = loss * loss_scale.scale if loss_scale else loss
        # Dense gradients: Keras's Adam squares an IndexedSlices gradient (an
        # embedding's) row by row before summing repeated ids, which is not Adam.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        if loss_scale:
            grads = [g / loss_scale.scale for g in grads]
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        if strategy:  # one all-reduce for everything: the means over the global batch
            loss, accuracy, *grads = [t / replicas for t in
                                      context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, accuracy, *grads])]
            new_states = context.all_gather(new_states, axis=0)  # [B, S] each: every replica's rows, in order
        grads, norm = tf.clip_by_global_norm(grads, clip_norm)
        return loss, accuracy, tf.math.is_finite(loss) & tf.math.is_finite(norm), grads, new_states

    def local(value):  # this process's first replica's; every replica holds the same after the all-reduce
        return strategy.experimental_local_results(value)[0] if strategy else value

    @tf.function(reduce_retracing=True)
    def train_step(x, y):  # x, y: [B, T] int
        if strategy and tf.distribute.in_cross_replica_context():
            raise RuntimeError("call the distributed training step outside strategy.scope()")
        loss, accuracy, finite, grads, new_states = strategy.run(gradients, (x, y)) if strategy else gradients(x, y)
        loss, accuracy, finite = local(loss), local(accuracy), local(finite)
        if counter is not None:
            counter.assign_add(1)
            optimizer.learning_rate.assign(learning_rate(counter))
        update = lambda: _update(optimizer, variables, kept, [local(g) for g in grads], states, new_states)
        finite = tf.cond(finite, update, lambda: tf.constant(False))
        if loss_scale:
            loss_scale.update(finite)
        if window is not None:
            window.assign_add(tf.where(finite, tf.cast(tf.stack([loss, accuracy, 1.0]), tf.float64), 0.0))
        return loss, accuracy, finite

    return train_step


def _update(optimizer, variables, kept, grads, states, new_states):
    """Apply the gradients (reduced already: applied to every copy as is) and take the new
    states; when a weight comes out non-finite, undo it all (kept: the weights, Adam's slots
    and counters). Returns whether the update was kept."""
    before = [tf.identity(v) for v in kept]
    optimizer.apply(grads, variables)
    # A finite gradient can still overflow a weight (a huge learning rate).
    applied = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])

    def keep():
        for s, new in zip(states, new_states):
            s.assign(new)  # with a strategy, each device's copy from its own replica's gathered rows
        return tf.constant(True)

    def undo():
        for v, old in zip(kept, before):
            v.assign(old)
        return tf.constant(False)

    return tf.cond(applied, keep, undo)


def make_validate(model, seqlen, max_chars=0):
    """Return validate(codes, stop) -> (loss in nats/char, accuracy) on held-out text,
    or None when the text is too short or stop() turned true between two chunks.

    The text is cut into a few long rows, each read from a zero state with the
    state carried from chunk to chunk: the model is judged the way it generates,
    not on independent short windows that each start cold. Only its first
    max_chars characters are read (0: all), so a validation costs the same on
    any corpus. Every character read but the first is predicted and scored
    once: the rows are padded to whole chunks at the end, and the padding is
    not scored.
    """
    @tf.function(reduce_retracing=True)
    def eval_chunk(x, y, scored, states):
        logits, states = model(x, states, training=False)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)  # [R, T]
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
        return tf.reduce_sum(ce * scored), tf.reduce_sum(correct * scored), states

    def validate(codes, stop=lambda: False):
        n = min(len(codes) - 1, max_chars or len(codes))  # predicted characters
        if n < 1:
            return None
        rows = max(1, min(VAL_ROWS, n // VAL_ROW_CHARS))
        row_len = -(-n // (rows * seqlen)) * seqlen  # whole chunks, enough for the text
        first = np.arange(rows)[:, None] * row_len + np.arange(seqlen)  # [R, T]: the first chunk's positions
        states = model.initial_states(rows)
        total_ce, total_correct = 0.0, 0.0
        for t in range(0, row_len, seqlen):
            if stop():
                return None
            at = first + t  # one chunk at a time: no copy of the whole text
            scored = (at < n).astype(np.float32)  # the padding past the text is not scored
            at = np.minimum(at, n - 1)
            ce, correct, states = eval_chunk(codes[at].astype(np.int32), codes[at + 1].astype(np.int32),
                                             scored, states)
            total_ce += float(ce)
            total_correct += float(correct)
        return total_ce / n, total_correct / n

    return validate
