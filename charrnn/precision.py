"""The precision of the matmuls: which one a run uses, and fp16's loss scaling.

    resolve(requested, cpu_flags, gpu_capabilities)   -> Choice: the precision, why, a warning
    for_this_machine(requested)                       resolve() with this machine's CPU and GPUs
    LossScale                                         dynamic loss scaling, for fp16

Mixed precision here means: the matmuls (the input projections, the recurrent
matmuls, the readout, and their gradients) run in bf16 or fp16; the variables,
Adam's slots, the carried state, the gate non-linearities, the loss and the
softmax stay fp32. Only computation is cast, so a checkpoint holds the same
fp32 variables in every precision and a run may resume in another one.

`auto` on a CPU picks bf16 where it multiplies bf16 natively (the amx_bf16 or
avx512_bf16 flag) and fp32 elsewhere. On a GPU it picks fp32, from the reports
below, until a GPU run measures otherwise (`benchmark.py gpu`): the stock layers
run there, on cuDNN, whose RNN kernels compute bf16 in fp32 (tensorflow PR
#60108; bf16 element-wise kernels were missing on GPUs, tensorflow#59743), so
bf16 only adds casts; Keras's RNN layers have failed under mixed_float16 with a
carried state (keras#14047, #15140); and from compute capability 8.0 (Ampere)
TensorFlow already multiplies fp32 as TF32 on the tensor cores by default.
Standard library only at import: resolve() is plain logic over the flags text
and the capabilities, so it is tested without the hardware.
"""

from dataclasses import dataclass

from charrnn.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the matmuls' dtype
KERAS_POLICIES = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # the stock layers'
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 dot-product instructions
NATIVE_BF16_GPU = (8, 0)  # Ampere and later: bf16 tensor cores, and TF32 for fp32 matmuls (TensorFlow's default)


@dataclass(frozen=True)
class Choice:
    precision: str     # "fp32" | "bf16" | "fp16"
    reason: str        # why, for the new-run line
    warning: str = ""  # one line to show before training, when the choice will be slow

    def describe(self):
        return f"precision {self.precision} ({self.reason})"


def resolve(requested, cpu_flags, gpu_capabilities):
    """The precision a run computes in.

    requested: one of PRECISIONS; cpu_flags: the flags line of /proc/cpuinfo (""
    where unknown); gpu_capabilities: the (major, minor) compute capability of
    each visible GPU, None for one that does not say. The model runs on the first
    GPU when there is one, else on the CPU. fp16 on a CPU is refused: it has no
    fast fp16 matmuls, so it would only lose precision.
    """
    if requested not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if gpu_capabilities:
        capability = gpu_capabilities[0]
        native = capability is not None and tuple(capability) >= NATIVE_BF16_GPU
        shown = "unknown" if capability is None else ".".join(map(str, capability))
        device = f"this GPU (compute capability {shown})"
        why_native = f"this GPU multiplies bf16 natively, compute capability {shown}"
        why_not = f"{device} has no native bf16 (it needs 8.0 or more)"
    else:
        flags = [f for f in NATIVE_BF16_CPU_FLAGS if f in cpu_flags.split()]
        native = bool(flags)
        device = "this CPU"
        why_native = f"this CPU multiplies bf16 natively, {' and '.join(flags)}"
        why_not = f"this CPU has no native bf16 (no {' or '.join(NATIVE_BF16_CPU_FLAGS)} flag)"
    if requested == "auto" and gpu_capabilities:
        return Choice("fp32", f"auto: {gpu_auto_reason(native, shown)}")
    if requested == "auto":
        return Choice("bf16", f"auto: {why_native}") if native else Choice("fp32", f"auto: {why_not}")
    if requested == "fp32":
        return Choice("fp32", "as asked")
    if requested == "fp16":
        if not gpu_capabilities:
            raise UserError("--precision fp16 needs a GPU: a CPU has no fast fp16 matmuls; "
                            "use --precision bf16 (or auto) or fp32")
        return Choice("fp16", "as asked, with dynamic loss scaling")
    if native:
        return Choice("bf16", f"as asked; {why_native}")
    return Choice("bf16", f"as asked; emulated: {why_not}",
                  warning=f"warning: --precision bf16 on {device}, which has no native bf16: its matmuls are "
                          f"emulated and will be slower than fp32; --precision auto picks fp32 here")


def gpu_auto_reason(tf32, shown):
    """Why `auto` is fp32 on a GPU (see the module docstring), for the new-run line."""
    if tf32:
        return (f"on this GPU, compute capability {shown}, fp32 matmuls run as TF32 on the tensor cores, "
                f"and cuDNN's RNN kernels compute bf16 in fp32 (tensorflow#60108)")
    return (f"this GPU, compute capability {shown}, has no bf16 or TF32 tensor cores (they need 8.0), and "
            f"Keras's RNN layers have failed under mixed_float16 with a carried state (keras#14047); "
            f"--precision fp16 tries it")


def cpu_flags(path="/proc/cpuinfo"):
    """The first `flags` line of /proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def gpu_capabilities():
    """The compute capability of each GPU TensorFlow sees (None where it does not say)."""
    import tensorflow as tf
    return [tf.config.experimental.get_device_details(gpu).get("compute_capability")
            for gpu in tf.config.list_physical_devices("GPU")]


def for_this_machine(requested):
    """resolve() for this machine's CPU flags and GPUs (imports TensorFlow)."""
    return resolve(requested, cpu_flags(), gpu_capabilities())


class LossScale:
    """Dynamic loss scaling, for fp16, whose gradients would underflow (below 6e-8).

    The loss is multiplied by `scale` before the gradients are taken and the
    gradients divided by it after. A step whose gradients are not finite is
    skipped (as the training step skips any non-finite step) and halves the
    scale; `growth_steps` finite steps in a row double it. That is
    keras.optimizers.LossScaleOptimizer's rule, kept outside the optimizer so that
    the gradients are clipped unscaled and every precision checkpoints the same
    Adam. The scale is not saved: a resumed fp16 run starts again from `initial`
    and finds its level within a few skipped steps.
    """

    def __init__(self, initial=2.0 ** 15, growth_steps=2000):
        import tensorflow as tf
        self.scale = tf.Variable(initial, trainable=False, dtype=tf.float32)
        self.finite_steps = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.growth_steps = growth_steps

    def update(self, finite):
        """After a step (finite: a bool tensor), inside the compiled step."""
        import tensorflow as tf
        grow = finite & (self.finite_steps + 1 >= self.growth_steps)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2, self.scale), self.scale / 2))
        self.finite_steps.assign(tf.where(finite & ~grow, self.finite_steps + 1, tf.zeros_like(self.finite_steps)))
