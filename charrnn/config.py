"""The configuration of a run: what the model is and how it is trained.

Dataclasses, the first two saved in every run's config.json and checked the same way
whether they come from the command line or from a run folder:

    ModelConfig     what a checkpoint needs to rebuild its model
    TrainConfig     every flag of rnn_train.py, with its default
    SamplingConfig  how rnn_play.py turns the model's logits into characters

Standard library only (no TensorFlow), so the scripts can parse and check their
arguments before the seconds TensorFlow takes to load.
"""

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from charrnn.errors import UserError

CELLS = ("gru", "lstm", "rnn")
IMPLEMENTATIONS = ("auto", "fused", "keras")
VALIDATION_SPLITS = ("auto", "files", "tail", "none")  # how txt_utils.read_corpus holds text out
DISTRIBUTE = ("none", "mirrored", "multi-worker")  # one device; this machine's devices; the machines of TF_CONFIG
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # weight blocks per cell: a kernel has units·GATES columns
DEFAULT_DATA = "shakespeare/*.txt"
TRAINING_COPIES = 4  # of the weights while training: the weights, their gradients, Adam's two slots
PLATEAUS = ("stop", "restart")  # --plateau: what plateau.KeepBest does after --patience validations
DECAYS = ("none", "cosine", "linear")  # --decay: the learning rate after the warm-up
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m(?:in)?)?(?:{_NUMBER}s)?")
# --max-time's bounds. A run needs seconds before its first step (TensorFlow's import and the
# step's compilation: 5-15 s on a 2-core CPU), two untimed steps and a calibration window before
# its plan, and keeps schedule.SAVE_SECONDS for its last checkpoint: under 30 s little or nothing
# trains. Over 30 days, a value is a typo (and the plan's arithmetic would overflow).
MIN_MAX_TIME, MAX_MAX_TIME = 30.0, 30 * 24 * 3600.0
# Deeper stacks take minutes to build and trace (100,000 layers: hours) and train no better:
# character models gain little past 3 or 4 layers.
MAX_LAYERS = 32


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


@dataclass
class ModelConfig:
    """Hyper-parameters of the model; saved in every checkpoint to rebuild it."""

    vocab_size: int
    cell: str = "gru"  # "gru" | "lstm" | "rnn"
    layers: int = 3
    units: int = 512
    embedding: int = 0  # 0: one-hot input (a row gather); >0: learned embedding size
    dropout: float = 0.2  # rate between layers and before the readout
    seed: int = 0  # seeds the initializers and the dropout masks
    weight_drop: float = 0.0  # rate of the recurrent kernels' dropout mask, one mask per batch

    def __post_init__(self):
        for name, low in (("vocab_size", 1), ("layers", 1), ("units", 1), ("embedding", 0), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"ModelConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.cell not in CELLS:
            raise ValueError(f"ModelConfig.cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("dropout", "weight_drop"):
            if not _is_rate(getattr(self, name)):
                raise ValueError(f"ModelConfig.{name} must be a rate in [0, 1), got {getattr(self, name)!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        if "vocab_size" not in d:
            raise ValueError("ModelConfig needs vocab_size")
        return cls(**d)

    def parameters(self) -> int:
        """The number of weights (closed form, so an absurd configuration costs nothing to check)."""
        columns = GATES[self.cell] * self.units  # of each kernel
        inputs = (self.embedding or self.vocab_size) + (self.layers - 1) * self.units  # rows of the kernels
        recurrent = self.layers * (self.units + 2) * columns  # recurrent kernels, biases (at most 2 rows)
        return (self.embedding * self.vocab_size + inputs * columns + recurrent
                + (self.units + 1) * self.vocab_size)  # readout

    def check_fits(self, copies=1):
        """Raise ValueError when `copies` of the float32 weights would not fit in this
        machine's memory: refused before anything is built, not after minutes of swapping."""
        need, memory = 4 * copies * self.parameters(), physical_memory()
        if memory is not None and need > memory:
            raise ValueError(f"a {self.cell} of {self.layers} layers of {self.units} units has "
                             f"{self.parameters():.3g} weights; {copies} cop{'ies' if copies > 1 else 'y'} of them "
                             f"take {need / 1e9:.3g} GB, more than this machine's {memory / 1e9:.3g} GB of memory")

    def flops_per_char(self) -> float:
        """Forward FLOPs per character (matmuls only); a training step costs about 3x."""
        U = self.units
        flops = 2 * U * self.vocab_size  # readout
        for layer in range(self.layers):
            inputs = U if layer > 0 else (self.embedding or self.vocab_size)
            flops += 2 * GATES[self.cell] * U * (inputs + U)
        return float(flops)


@dataclass
class TrainConfig:
    """Every setting of a training run (rnn_train.py's flags, same names)."""

    data: list = field(default_factory=lambda: [DEFAULT_DATA])
    validation: str = "auto"
    max_vocab: int = 0
    cell: str = "gru"
    layers: int = 3
    units: int = 512
    embedding: int = 0
    dropout: float = 0.2
    weight_drop: float = 0.0
    seqlen: int = 30
    batch_size: int = 200
    lr: float = 0.001
    warmup_steps: int = 0
    decay: str = "none"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    epochs: int = 10
    max_steps: int = 0
    max_time: str = ""
    seed: int = 0
    run: str = ""
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "log"
    val_every: int = 50
    patience: int = 3
    plateau: str = "restart"
    val_chars: int = 2_000_000
    sample_every: int = 150
    checkpoint_every: int = 500
    log_every: int = 10
    keep: int = 5
    max_nonfinite: int = 10
    allow_corpus_change: bool = False
    implementation: str = "auto"
    distribute: str = "none"
    precision: str = "auto"

    def model_config(self, vocab_size) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, cell=self.cell, layers=self.layers, units=self.units,
                           embedding=self.embedding, dropout=self.dropout, seed=self.seed,
                           weight_drop=self.weight_drop)

    @property
    def max_seconds(self) -> float | None:
        """--max-time in seconds, or None when the run has no time limit."""
        return parse_duration(self.max_time) if self.max_time else None

    def check(self, saved=False) -> "TrainConfig":
        """Reject values that would only fail later, naming the flag. The values may come
        from a run's config.json (saved), so their types are checked too; a run saved
        before MAX_LAYERS is not refused by it."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _KINDS.get(f.type)
            if kind is not None and not kind[0](value):
                raise UserError(f"{flag(f.name)} must be {kind[1]} (got {value!r})")
        for name, choices in (("cell", CELLS), ("implementation", IMPLEMENTATIONS), ("validation", VALIDATION_SPLITS),
                              ("distribute", DISTRIBUTE), ("decay", DECAYS), ("plateau", PLATEAUS)):
            if getattr(self, name) not in choices:
                raise UserError(f"{flag(name)} must be one of {', '.join(choices)} (got {getattr(self, name)!r})")
        positive = ["layers", "units", "seqlen", "batch_size", "epochs", "val_every", "sample_every",
                    "checkpoint_every", "log_every", "keep", "max_nonfinite"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be >= 1 (got {getattr(self, name)})")
        for name in ["max_steps", "max_vocab", "embedding", "val_chars", "warmup_steps", "patience"]:
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must be >= 0 (got {getattr(self, name)})")
        if self.max_vocab == 1:
            raise UserError("--max-vocab must be 0 (keep every character) or >= 2 (the unknown symbol and "
                            "at least one character)")
        if not 0 <= self.seed < 2 ** 32:
            raise UserError(f"--seed must be in [0, 2**32) (got {self.seed})")
        for name in ("dropout", "weight_drop"):  # the rule of ModelConfig, which would name no flag
            if not _is_rate(getattr(self, name)):
                raise UserError(f"{flag(name)} must be in [0, 1) (got {getattr(self, name)})")
        if not self.lr > 0 or not self.clip_norm > 0:
            raise UserError(f"--lr and --clip-norm must be > 0 (got {self.lr}, {self.clip_norm})")
        if self.lr == math.inf:
            raise UserError("--lr must be finite (got inf); Adam's rate is a few thousandths, such as 0.003")
        if self.layers > MAX_LAYERS and not saved:
            raise UserError(f"--layers must be at most {MAX_LAYERS} (got {self.layers}): deeper stacks take "
                            f"minutes to build and train no better; use 2 to 4")
        try:  # the vocabulary is not known yet: the smallest one, so no model that fits is refused
            self.model_config(max(self.max_vocab, 2)).check_fits(TRAINING_COPIES)
        except ValueError as e:
            raise UserError(f"--layers {self.layers} --units {self.units}: {e}; choose a smaller model") from None
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0 <= self.weight_decay < 1:
            raise UserError(f"--weight-decay must be in [0, 1) (got {self.weight_decay})")
        if self.max_time:
            parse_duration(self.max_time)
        if self.max_time and self.distribute != "none":
            raise UserError("--max-time with --distribute is not supported yet (each worker would plan its "
                            "own steps); use --max-steps")
        return self


def warmup_warning(cfg: TrainConfig, steps=None, source="--max-steps") -> str | None:
    """A warning line when the warm-up outlasts the run's steps: the learning rate would never
    reach --lr. steps: the run's steps, --max-steps by default (known before training); the
    loop passes those of --epochs once the corpus is read, and a --max-time run's plan; source
    says where they come from."""
    steps = cfg.max_steps if steps is None else steps
    if not steps or cfg.warmup_steps <= steps:
        return None
    return (f"warning: --warmup-steps {cfg.warmup_steps} is longer than the run's {steps} steps "
            f"({source}): the learning rate stops at {cfg.lr * steps / cfg.warmup_steps:.3g} and never "
            f"reaches --lr {cfg.lr:g}; lower --warmup-steps")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


# The checks of TrainConfig's field types: (test, what the value must be).
_KINDS = {int: (_is_int, "an integer"), float: (_is_number, "a number"),
          bool: (lambda v: isinstance(v, bool), "true or false"), str: (lambda v: isinstance(v, str), "a string"),
          list: (lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v), "a list of paths")}


def physical_memory():
    """Bytes of memory of this machine, or None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# A resumed run must keep these: they define the model, the text and the batches.
FIXED_ON_RESUME = ("cell", "layers", "units", "embedding", "dropout", "weight_drop", "seqlen", "batch_size",
                   "seed", "max_vocab", "validation")
# These belong to the process, not the run: never taken from the saved config.
PER_PROCESS = ("run", "checkpoint_dir", "log_dir", "allow_corpus_change", "implementation", "distribute", "precision")


def parse_duration(text) -> float:
    """--max-time's value in seconds: 90s, 10m, 1h30m, 2h; a number needs its unit, and the
    value must lie between MIN_MAX_TIME and MAX_MAX_TIME."""
    text = str(text).strip()
    shown = text if len(text) <= 24 else text[:20] + "..."  # a 400-digit value is not echoed whole
    forms = "write it as 90s, 10m or 1h30m"
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        if re.fullmatch(rf"(?:{_NUMBER}[hm])*{_NUMBER}", text):
            raise UserError(f"--max-time {shown!r} has no unit (seconds, minutes or hours?); {forms}")
        raise UserError(f"--max-time {shown!r} is not a duration; {forms}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not total >= MIN_MAX_TIME:
        raise UserError(f"--max-time {shown!r} is shorter than {MIN_MAX_TIME:.0f}s, the least a run can train "
                        f"in: the start-up, the calibration and the last checkpoint take most of it; give "
                        f"30s or more, or use --max-steps")
    if not total <= MAX_MAX_TIME:
        raise UserError(f"--max-time {shown!r} is longer than 30 days, the most it accepts; give at most "
                        f"720h, or use --max-steps or --epochs")
    return total


def flag(name):
    """The command-line flag of a TrainConfig field or an argparse dest: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # <1 sharpens the distribution, >1 flattens it
    top_k: int | None = None  # keep the k most likely characters (None = all); the original's topn
    top_p: float = 1.0        # keep the smallest set whose probability reaches p (nucleus)
    argmax: bool = False      # always take the most likely character
    seed: int = 0

    def check(self):
        """Raise UserError naming the flag at fault."""
        if not 0 < self.temperature < math.inf:
            raise UserError(f"--temperature must be a number > 0 (got {self.temperature}); use --argmax for "
                            f"greedy text")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be >= 1 (got {self.top_k})")
        return self
