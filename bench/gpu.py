"""The gpu section: what had run only on CPUs, checked on this machine's GPUs in one table."""

import contextlib
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

from bench.common import CONFIGS, ROOT, VOCAB, run_child
from bench.quality import train_command

GPU_BUDGET_S = 8 * 60  # the whole check; what is left undone past it fails
GPU_CHECK_FLAGS = ("--layers 2 --units 128 --seqlen 64 --batch-size 64 --validation tail --log-every 10 "
                   "--val-every 20 --checkpoint-every 20 --sample-every 1000")


def child_gpus(args):
    import tensorflow as tf
    details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
    return {"tensorflow": tf.__version__,
            "gpus": [[d.get("device_name", "GPU"), d.get("compute_capability")] for d in details]}


def child_gpu_cells(args):
    """30 steps of each cell on the stock layers (cuDNN) in each precision, fp16 with loss scaling,
    on a text whose next character is the code after this one: {"cell precision": first and last
    loss, or the error}."""
    import keras
    import numpy as np
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.precision import LossScale
    from charrnn.steps import make_train_step
    import tensorflow as tf
    starts = np.random.default_rng(0).integers(0, VOCAB, (64, 1))
    data = ((starts + np.arange(65)) % VOCAB).astype(np.int32)  # [B, T + 1], each row counting up
    results = {}
    for cell in ("gru", "lstm", "rnn"):
        for precision in ("fp32", "bf16", "fp16"):
            try:
                keras.utils.set_random_seed(0)
                model = CharRNN(ModelConfig(vocab_size=VOCAB, cell=cell, layers=2, units=256), implementation="keras",
                                precision=precision)
                variables = list(model.named_variables().values())
                states = [tf.Variable(s, trainable=False) for s in model.initial_states(64)]
                step = make_train_step(model, keras.optimizers.Adam(3e-3), variables, states, clip_norm=5.0,
                                       loss_scale=LossScale() if precision == "fp16" else None)
                losses = [float(step(data[:, :-1], data[:, 1:])[0]) for _ in range(30)]
                results[f"{cell} {precision}"] = {"first": losses[0], "last": losses[-1]}
            except Exception as e:  # one failing combination must not hide the others
                first_line = (str(e).strip().splitlines() or [""])[0][:160]
                results[f"{cell} {precision}"] = {"error": f"{type(e).__name__}: {first_line}"}
    return results


@contextlib.contextmanager
def visible_gpus(devices):
    """CUDA_VISIBLE_DEVICES for the processes started inside: "" for none, "0" for the first."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        yield
    finally:
        if saved is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def first_gpu():
    """The first GPU this process may use, for CUDA_VISIBLE_DEVICES."""
    return (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]


def script(folder, *args):
    """Run rnn_train.py or rnn_play.py (args[0]) in folder: (stdout, stderr); its error line on failure."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *map(str, args[1:])], cwd=folder,
                         capture_output=True, text=True, timeout=240)
    if out.returncode:
        raise RuntimeError(f"{args[0]} exit {out.returncode}: " + (out.stderr.strip().splitlines() or [""])[-1][:200])
    return out.stdout, out.stderr


def eval_loss(stdout):
    return float(stdout.split("loss ", 1)[1].split()[0])


def gpu_end_to_end(tmp, text):
    """The user's commands on the GPU, on the CPU's fused kernels and back: (check, ok, detail)s; raises on failure."""
    flags = shlex.split(GPU_CHECK_FLAGS) + ["--data", text, "--run", "gpu"]
    _, err = script(tmp, "rnn_train.py", *flags, "--max-steps", 40)
    new_run = next((line for line in err.splitlines() if line.startswith("new run")), "")
    yield "train on the GPU (auto: stock layers)", True, "precision " + new_run.rpartition(", precision ")[2]
    script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 60)
    yield "resume on the GPU", True, "steps 40 -> 60"
    gpu_loss = eval_loss(script(tmp, "rnn_play.py", "gpu", "--eval", text)[0])
    with visible_gpus(""):
        cpu_loss = eval_loss(script(tmp, "rnn_play.py", "gpu", "--eval", text)[0])
        sample = script(tmp, "rnn_play.py", "gpu", "-n", 300, "--seed", 0)[0]
        if len(sample.strip()) < 200:
            raise RuntimeError(f"the CPU wrote {len(sample.strip())} of 300 characters")
        if abs(gpu_loss - cpu_loss) > 0.01:
            raise RuntimeError(f"--eval {gpu_loss:.4f} on the GPU, {cpu_loss:.4f} on the CPU")
        yield ("GPU checkpoint played on the CPU", True,
               f"--eval {gpu_loss:.4f} GPU, {cpu_loss:.4f} CPU; 300 chars written")
        script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 70, "--implementation", "fused")
        yield "resumed on the CPU, fused kernels", True, "steps 60 -> 70"
    script(tmp, "rnn_train.py", "--resume", "gpu", "--max-steps", 80)
    yield "and back on the GPU", True, "steps 70 -> 80"
    start = time.perf_counter()
    sample = script(tmp, "rnn_play.py", "gpu", "-n", 2000, "--seed", 0)[0]
    if len(sample.strip()) < 1500:
        raise RuntimeError(f"the GPU wrote {len(sample.strip())} of 2000 characters")
    seconds = time.perf_counter() - start
    yield "generate on the GPU", True, f"2,000 chars in {seconds:.1f} s, TensorFlow's start included"


def gpu_mirrored(text, gpus):
    """--distribute mirrored on one GPU against no strategy (tensorflow#40421: it can keep the GRU off
    cuDNN), and over every GPU, 64 rows each: (check, ok, detail)s."""
    flags = f"{GPU_CHECK_FLAGS} --max-steps 60"
    with visible_gpus(first_gpu()):
        plain = train_command(text, flags)["chars_s"]
        one = train_command(text, f"{flags} --distribute mirrored")["chars_s"]
    yield "--distribute mirrored on 1 GPU", True, f"{one:,.0f} chars/s, x{one / plain:.2f} the speed without it"
    if gpus > 1:
        wide = flags.replace("--batch-size 64", f"--batch-size {64 * gpus}")
        every = train_command(text, f"{wide} --distribute mirrored")["chars_s"]
        yield f"--distribute mirrored over {gpus} GPUs", True, (f"{every:,.0f} chars/s at batch {64 * gpus}: "
                                                                 f"x{every / one:.2f} the speed of 1 GPU at 64")


def gpu_speed(args):
    """Training chars/s at (a) and (b), stock layers on cuDNN, and PyTorch's cuDNN nn.GRU when importable."""
    peer = not subprocess.run([args.peer_python, "-c", "import torch; assert torch.cuda.is_available()"],
                              capture_output=True).returncode
    for name, (kwargs, batch, seqlen) in CONFIGS.items():
        ours = run_child("train", config=name, implementation="keras", precision="fp32,bf16", seconds=2, windows=3)
        shape = f"({name}) GRU {kwargs['layers']}x{kwargs['units']}, seq {seqlen}, batch {batch}"
        detail = ", ".join(f"{p} {ours[p]['chars_s']:,.0f}" for p in ("fp32", "bf16"))
        if peer:
            theirs = run_child("peer", python=args.peer_python, config=name, precision="fp32,bf16", seconds=2,
                               windows=3, device="cuda")
            detail += "; PyTorch nn.GRU " + ", ".join(f"{p} {theirs[p]['chars_s']:,.0f} (ours x"
                                                      f"{ours[p]['chars_s'] / theirs[p]['chars_s']:.2f})"
                                                      for p in ("fp32", "bf16"))
        yield f"train speed {shape}", True, detail + " chars/s" + ("" if peer else "; PyTorch with CUDA not importable")


def gpu_cells():
    """A row for each cell and precision: it must learn to count. The loss falls by 0.2 nats at least
    (measured on a CPU at 1x32, 0.5 to 1.5 nats; a step that learns nothing moves it by about 0)."""
    for combination, r in run_child("gpu_cells").items():
        learnt = "error" not in r and math.isfinite(r["last"]) and r["last"] < r["first"] - 0.2
        detail = r.get("error") or f"loss {r['first']:.3f} -> {r['last']:.3f} in 30 steps"
        yield f"stock layers, {combination}", learnt, detail


def report_gpu(args, matmul):
    """Everything that had run only on CPUs, on this machine's GPUs: one table; exit 1 if a check failed."""
    from charrnn import precision
    found = run_child("gpus")
    if not found["gpus"]:
        print(f"gpu: no NVIDIA GPU visible to TensorFlow {found['tensorflow']}; nothing measured (a GPU machine "
              f"needs `pip install tensorflow[and-cuda]=={found['tensorflow']}` and the NVIDIA driver)")
        return
    capabilities = [tuple(c) if c else None for _, c in found["gpus"]]
    rows = [("GPUs", "ok", 0.0, ", ".join(f"{n} ({'.'.join(map(str, c)) if c else '?'})" for n, c in found["gpus"])),
            ("--precision auto", "ok", 0.0, precision.resolve("auto", precision.cpu_flags(), capabilities).describe())]
    deadline = time.perf_counter() + GPU_BUDGET_S
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "text.txt")
        with open(os.path.join(ROOT, "walkthrough", "sonnets.txt")) as f:
            sonnet = f.read()
        with open(text, "w") as f:
            f.write(sonnet * 30)  # about 200 KB: enough batches for short runs and their validation
        stages = [("cells and precisions", gpu_cells), ("end to end", lambda: gpu_end_to_end(tmp, text)),
                  ("mirrored", lambda: gpu_mirrored(text, len(found["gpus"]))), ("speed", lambda: gpu_speed(args))]
        for stage, checks in stages:
            start = time.perf_counter()
            if start > deadline:
                rows.append((stage, "FAIL", 0.0, f"not run: the {GPU_BUDGET_S // 60}-minute budget is spent"))
                continue
            try:
                for name, ok, detail in checks():
                    rows.append((name, "ok" if ok else "FAIL", time.perf_counter() - start, detail))
                    start = time.perf_counter()
            except (Exception, SystemExit) as e:  # run_child and train_command exit on a failed child
                rows.append((stage, "FAIL", time.perf_counter() - start, str(e).strip().splitlines()[-1][:300]))
    width = max(len(r[0]) for r in rows)
    print(f"gpu: {'check':<{width}}  result  seconds  detail")
    for name, result, seconds, detail in rows:
        print(f"gpu: {name:<{width}}  {result:<6}  {seconds:7.1f}  {detail}")
    failed = [r[0] for r in rows if r[1] == "FAIL"]
    if failed:
        sys.exit(f"gpu: {len(failed)} check{'s' * (len(failed) > 1)} failed: {', '.join(failed)}")
