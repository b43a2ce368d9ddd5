"""The training sections: matmul (the FLOP bounds), train, peer (PyTorch's nn.GRU),
precision (fp32 against bf16's validation loss) and distribute (tf.distribute's cost)."""

import os
import statistics
import subprocess
import tempfile
import time

from bench.common import CONFIGS, VOCAB, peak_rss_mb, run_child, text_path, timed, timing, windows

MATMUL_SHAPES = ((200, 512, 1536), (6000, 512, 1536), (100, 512, 512))  # [M, K] x [K, N] at (a)
QUALITY = dict(cell="gru", layers=2, units=256, embedding=0, seqlen=64, batch_size=64, lr=2e-3)


def child_matmul(args):
    import numpy as np
    import tensorflow as tf
    n = 4096
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n ** 3
    np_rate = max(flops / timed(lambda: a @ a) for _ in range(7))  # the best of several: a bound
    rates = {"numpy_gflops": np_rate / 1e9}
    for name, dtype in (("tf", tf.float32), ("tf_bf16", tf.bfloat16)):
        ta = tf.cast(a, dtype)
        rates[f"{name}_gflops"] = max(flops / timed(lambda: tf.matmul(ta, ta).numpy()) for _ in range(7)) / 1e9
    # The model's shapes, fp32 and bf16 in turn: the median of several timed batches each.
    for m, k, n in MATMUL_SHAPES:
        x, w = tf.random.normal([m, k]), tf.random.normal([k, n])
        reps = max(3, int(1e9 / (2 * m * k * n)))
        pairs = {dtype: (tf.cast(x, dtype), tf.cast(w, dtype)) for dtype in (tf.float32, tf.bfloat16)}
        times = {dtype: [] for dtype in pairs}
        for _ in range(7):
            for dtype, (xd, wd) in pairs.items():
                start = time.perf_counter()
                for _ in range(reps):
                    y = tf.matmul(xd, wd)
                y.numpy()
                times[dtype].append((time.perf_counter() - start) / reps)
        rates[f"{m}x{k}x{n}"] = [2 * m * k * n / statistics.median(times[d]) / 1e9 for d in pairs]
    return rates


def child_train(args):
    import dataclasses

    import numpy as np
    from charrnn.config import TrainConfig
    from charrnn.trainer import Trainer
    kwargs, batch, seqlen = CONFIGS[args.config]
    cfg = TrainConfig(**kwargs, batch_size=batch, seqlen=seqlen, implementation=args.implementation)
    data = np.random.default_rng(0).integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)

    def make_step(precision):
        trainer = Trainer(cfg.model_config(VOCAB), dataclasses.replace(cfg, precision=precision))  # rnn_train.py's
        i = iter(range(1 << 60))

        def one_step():
            d = data[next(i) % len(data)]
            trainer.train_step(d[:, :-1], d[:, 1:])
            return batch * seqlen

        for _ in range(3):
            one_step()  # trace and warm up
        return one_step

    return {**interleaved({p: make_step(p) for p in args.precision.split(",")}, args), "peak_mb": peak_rss_mb()}


def interleaved(steps, args):
    """{name: figures} of several step functions, measured window by window in turn."""
    rates = {name: [] for name in steps}
    for _ in range(args.windows):
        for name, step in steps.items():
            rates[name] += windows(step, args.seconds, 1)
    return {name: {"chars_s": statistics.median(r), "min": min(r), "max": max(r)} for name, r in rates.items()}


def child_distribute(args):
    import numpy as np
    from charrnn import distribute
    from charrnn.config import TrainConfig
    from charrnn.trainer import Trainer
    kwargs, batch, seqlen = CONFIGS["b"]
    cfg = TrainConfig(**kwargs, batch_size=batch, seqlen=seqlen, implementation="fused", precision="fp32")
    strategy = distribute.make_strategy("mirrored")

    def build(scope):
        with scope:
            return Trainer(cfg.model_config(VOCAB), cfg)  # rnn_train.py's setup, its step per replica in a scope

    steps = {"one": build(distribute.scope(None)), "two": build(strategy.scope())}
    data = np.random.default_rng(0).integers(0, VOCAB, (16, batch, seqlen + 1), dtype=np.int32)
    i = iter(range(1 << 60))

    def one_step(trainer):
        d = data[next(i) % len(data)]
        trainer.train_step(d[:, :-1], d[:, 1:])
        return batch * seqlen

    for step in steps.values():
        for _ in range(3):
            one_step(step)  # trace and warm up
    rates = {name: [] for name in steps}
    for _ in range(args.windows):  # interleaved: both see the same load
        for name, step in steps.items():
            rates[name] += windows(lambda: one_step(step), args.seconds, 1)
    return {"replicas": strategy.num_replicas_in_sync, "load": os.getloadavg(),
            **{name: statistics.median(r) for name, r in rates.items()},
            **{f"{name}_all": r for name, r in rates.items()}}


def train_flops_per_char(name):
    """FLOPs of one training step per character at config `name` (3x the forward's matmuls)."""
    from charrnn.config import ModelConfig
    return 3 * ModelConfig(vocab_size=VOCAB, **CONFIGS[name][0]).flops_per_char()


def child_peer(args):
    import contextlib
    import torch
    import torch.nn.functional as F
    kwargs, batch, seqlen = CONFIGS[args.config]
    layers, units = kwargs["layers"], kwargs["units"]
    torch.manual_seed(0)
    device = args.device  # "cpu", or "cuda" for the gpu section
    data = torch.randint(0, VOCAB, (16, seqlen + 1, batch), device=device)

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(VOCAB, units, layers, dropout=0.2)
            self.dropout, self.readout = torch.nn.Dropout(0.2), torch.nn.Linear(units, VOCAB)

        def forward(self, ids, h):  # ids [T, B]
            y, h = self.gru(F.one_hot(ids, VOCAB).float(), h)
            return self.readout(self.dropout(y)), h

    def make_step(precision):
        model = Peer().to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        state = [torch.zeros(layers, batch, units, device=device), 0]

        def one_step():
            d = data[state[1] % len(data)]
            with (torch.autocast(device, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
                logits, h = model(d[:-1], state[0])
                loss = F.cross_entropy(logits.reshape(-1, VOCAB), d[1:].reshape(-1))
            state[0], state[1] = h.detach().float(), state[1] + 1  # the carried state stays fp32
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            float(loss)
            return batch * seqlen

        for _ in range(3):
            one_step()
        return one_step

    steps = {p: make_step(p) for p in args.precision.split(",") if p in ("fp32", "bf16")}
    return {**interleaved(steps, args), "version": torch.__version__, "threads": torch.get_num_threads(),
            "peak_mb": peak_rss_mb()}


def child_precision(args):
    """Train QUALITY on --data in one precision; the validation loss of the result (scored
    after the run, so the run itself validates nothing)."""
    import contextlib
    import io
    from charrnn import steps, training
    from charrnn.config import TrainConfig
    from charrnn.model import CharRNN
    from charrnn.catalog import load_for_generation
    from charrnn.text import read_corpus
    low = args.precision
    cfg = TrainConfig(data=[args.data], validation="tail", max_steps=args.steps, val_every=args.steps + 1,
                      sample_every=args.steps + 1, checkpoint_every=args.steps, log_every=args.steps,
                      checkpoint_dir=os.path.join(args.tmp, "ck"), log_dir=os.path.join(args.tmp, "log"),
                      run=low, precision=low, **QUALITY)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        training.train(cfg)
    seconds = time.perf_counter() - start
    # The final weights, read in fp32 (as rnn_play.py reads them) and in the run's precision.
    model, vocab, _, _ = load_for_generation(low, cfg.checkpoint_dir)
    valid = read_corpus(cfg.data, vocab=vocab, validation=cfg.validation).valid
    losses = {"fp32": steps.make_validate(model, cfg.seqlen)(valid)[0]}
    if low != "fp32":
        twin = CharRNN(model.config, "fused", precision=low)
        for name, variable in twin.named_variables().items():
            variable.assign(model.named_variables()[name])
        losses[low] = steps.make_validate(twin, cfg.seqlen)(valid)[0]
    return {"losses": losses, "seconds": seconds, "chars": len(valid)}


def report_matmul(args):
    """Prints the matmul rates; returns the FLOP bounds' rates, {precision: GFLOP/s}."""
    m = run_child("matmul")
    matmul = {"fp32": max(m["numpy_gflops"], m["tf_gflops"]), "bf16": m["tf_bf16_gflops"]}
    print(f"matmul: 4096^3 fp32 numpy {m['numpy_gflops']:.0f} GFLOP/s, tensorflow {m['tf_gflops']:.0f} GFLOP/s; "
          f"bf16 tensorflow {m['tf_bf16_gflops']:.0f} GFLOP/s (x{m['tf_bf16_gflops'] / m['tf_gflops']:.2f})")
    print("matmul: tensorflow fp32 / bf16 GFLOP/s at the model's shapes: " + ", ".join(
        f"[{mm},{k}]x[{k},{n}] {m[f'{mm}x{k}x{n}'][0]:.0f} / {m[f'{mm}x{k}x{n}'][1]:.0f}"
        for mm, k, n in MATMUL_SHAPES))
    return matmul


def report_train(args, matmul):
    precisions = args.precision.split(",")
    for name, (kwargs, batch, seqlen) in CONFIGS.items():
        runs = [(args.implementation, args.precision)] + ([("keras", "fp32")] if args.implementation != "keras" else [])
        for implementation, precision in runs:
            r = run_child("train", config=name, implementation=implementation, precision=precision, **timing(args))
            for p in precision.split(","):
                bound = matmul[p] * 1e9 / train_flops_per_char(name)
                f = r[p]
                print(f"train ({name}) {kwargs['cell'].upper()} {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                      f"batch {batch}, {implementation} {p}: {f['chars_s']:,.0f} chars/s (min {f['min']:,.0f}, "
                      f"max {f['max']:,.0f}); {p} FLOP bound {bound:,.0f} chars/s; fraction "
                      f"{f['chars_s'] / bound:.2f}; peak memory {r['peak_mb']:,.0f} MB")
            if implementation != args.implementation:
                continue
            args.trained.update({(name, p): r[p]["chars_s"] for p in precision.split(",")})  # for peer, same run
            if len(precisions) > 1:
                print(f"train ({name}) {implementation}: " + ", ".join(
                    f"{p} x{r[p]['chars_s'] / r[precisions[0]]['chars_s']:.2f}" for p in precisions[1:])
                    + f" the speed of {precisions[0]} (interleaved in one process)")


def report_peer(args, matmul):
    precisions = args.precision.split(",")
    probe = subprocess.run([args.peer_python, "-c", "import torch"], capture_output=True)
    if probe.returncode:
        print(f"peer: skipped, {args.peer_python} cannot import torch (pass --peer-python)")
    configs = {} if probe.returncode else CONFIGS
    for name, (kwargs, batch, seqlen) in configs.items():
        r = run_child("peer", python=args.peer_python, config=name, precision=args.precision, **timing(args))
        for p in (p for p in precisions if p in r):
            bound = matmul[p] * 1e9 / train_flops_per_char(name)
            f = r[p]
            autocast = " (torch.autocast)" if p == "bf16" else ""
            print(f"peer ({name}) PyTorch {r['version']} nn.GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, "
                  f"batch {batch}, {r['threads']} threads, {p}{autocast}: {f['chars_s']:,.0f} chars/s (min "
                  f"{f['min']:,.0f}, max {f['max']:,.0f}); fraction {f['chars_s'] / bound:.2f}; peak memory "
                  f"{r['peak_mb']:,.0f} MB")
        if "fp32" in r and "bf16" in r:
            print(f"peer ({name}): bf16 x{r['bf16']['chars_s'] / r['fp32']['chars_s']:.2f} the speed of fp32 "
                  f"(interleaved in one process)")
        ours = [f"{p} x{args.trained[name, p] / r[p]['chars_s']:.2f}" for p in precisions if (name, p) in args.trained]
        if ours:
            print(f"peer ({name}): this project's {args.implementation} training against PyTorch's in this run: "
                  + ", ".join(ours))


def report_distribute(args, matmul):
    r = run_child("distribute", **timing(args))
    kwargs, batch, seqlen = CONFIGS["b"]
    overhead_ms = (1 / r["two"] - 1 / r["one"]) * batch * seqlen * 1e3
    print(f"distribute (b) GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch {batch}: one device "
          f"{r['one']:,.0f} chars/s, mirrored over {r['replicas']} logical CPU devices {r['two']:,.0f} chars/s "
          f"(x{r['two'] / r['one']:.2f}, {overhead_ms:+.1f} ms a step); windows one "
          f"{' '.join(f'{x:,.0f}' for x in r['one_all'])}, two {' '.join(f'{x:,.0f}' for x in r['two_all'])}; "
          f"load average {' '.join(f'{x:.1f}' for x in r['load'])} on {os.cpu_count()} CPUs")


def report_precision(args, matmul):
    data = text_path(args)
    losses = {}
    for p in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_child("precision", data=data, steps=args.steps, precision=p, tmp=tmp)
        losses[p] = r["losses"]
        read = ", ".join(f"read in {q} {loss:.4f}" for q, loss in r["losses"].items())
        print(f"precision: GRU 2x256, seq 64, batch 64, lr 2e-3, {args.steps} steps trained in {p} "
              f"({r['seconds']:.0f} s): validation loss {read} nats/char ({r['chars']:,} chars)")
    difference = losses["bf16"]["fp32"] - losses["fp32"]["fp32"]
    print(f"precision: bf16 - fp32 = {difference:+.4f} nats/char (both read in fp32; the goal is |difference| "
          f"<= 0.02)")
