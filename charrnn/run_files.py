"""A run folder's layout: the one module that knows its file names, and its JSON files.

    checkpoints/<run>/                 (--checkpoint-dir)
        config.json    model and training configuration (JSON, never pickle)
        vocab.json     the vocabulary, so the run decodes its own output
        corpus.json    manifest of the training files: names, sizes, sha256 (corpus_check.py)
        .lock          held (flock) by the process training into the run (lock.py)
        checkpoint, ckpt-<step>.*      the newest checkpoints    } written by
        best/checkpoint, best/ckpt-*   the best by validation    } checkpoints.Manager
    log/<run>/train, log/<run>/validation   TensorBoard (--log-dir)

The JSON files are written atomically and read as untrusted input: a damaged
or edited file is a one-line error naming it, never a traceback.
"""

import json
from pathlib import Path

from charrnn import checkpoints
from charrnn.config import ModelConfig
from charrnn.errors import UserError
from charrnn.text import Vocabulary

CONFIG, VOCAB, CORPUS, LOCK, BEST = "config.json", "vocab.json", "corpus.json", ".lock", "best"
FORMAT_VERSION = 1
JSON_FILES = (CONFIG, VOCAB, CORPUS)


def is_run(path):
    """Whether path is a run folder: one holding a config.json."""
    return (Path(path) / CONFIG).is_file()


def write_json(path, obj):
    """Write JSON atomically and durably (checkpoints.write_atomically); a full disk
    is a one-line error, with no temporary file left."""
    try:
        checkpoints.write_atomically(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); free some space or choose another "
                        f"--checkpoint-dir") from None


def read_json(path):
    """A run's JSON file, read as untrusted input (checkpoints.read_regular_file)."""
    path = Path(path)
    try:
        return json.loads(checkpoints.read_regular_file(path, 1 << 28).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: this run folder is incomplete") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); restore it from a backup") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); restore it from a backup") from None


def load_run_files(run_dir):
    """Return (config dict, Vocabulary, corpus manifest or None) of a run, each read once."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{run_dir / CONFIG} is damaged (not a JSON object); restore it from a backup")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{run_dir / CONFIG} has format_version {config.get('format_version')!r}; "
                        f"this version of the tool reads format {FORMAT_VERSION}")
    try:
        vocab = Vocabulary.from_json(read_json(run_dir / VOCAB))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run_dir / VOCAB} is damaged ({e}); restore it from a backup") from None
    manifest = read_json(run_dir / CORPUS) if (run_dir / CORPUS).exists() else None
    return config, vocab, manifest


def model_config(run_dir, config, vocab=None):
    """The ModelConfig of a run's config.json contents, checked: against the run's
    Vocabulary when given, and that its weights fit in this machine's memory, before anything is built."""
    where = Path(run_dir) / CONFIG
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{where} has no model section; restore it from a backup")
    try:
        model = ModelConfig.from_json(config["model"])
        model.check_fits()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: bad model configuration ({e})") from None
    if vocab is not None and model.vocab_size != len(vocab):
        raise UserError(f"{Path(run_dir) / VOCAB} has {len(vocab)} symbols but {where} says vocab_size "
                        f"{model.vocab_size}; restore the files from a backup")
    return model


def describe_model(model):
    """A ModelConfig in a few characters, as messages and --list show it: "gru 2x512"."""
    return f"{model.cell} {model.layers}x{model.units}"
