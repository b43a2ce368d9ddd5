"""The corpus a run trained on, and the check that a resumed or forked run trains on the same.

corpus.json, the manifest, names each training file with its size and sha256, and
the folder the run started in (relative globs are read from there). Resuming on
text that differs is refused, naming the first file that does, unless
--allow-corpus-change, which warns instead.
"""

import os
import sys
from pathlib import Path

from charrnn.errors import UserError
from charrnn.run_files import CORPUS


def manifest(cfg, files):
    """The contents of corpus.json for a run of cfg training on files (the corpus's FileSpans)."""
    return {"data": cfg.data, "workdir": os.getcwd(), "validation": cfg.validation,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]}


def check_resumed(saved, cfg, corpus, run_dir):
    """Check the corpus a resumed or forked run of cfg read against saved, the manifest of
    the run at run_dir it starts from: refused if it differs, warned with --allow-corpus-change."""
    changed = _check_same_corpus(saved, manifest(cfg, corpus.files), cfg.allow_corpus_change, run_dir)
    _warn_unknown(corpus, changed, run_dir)


def _check_same_corpus(saved, current, allow, run_dir):
    """Refuse to resume on different text, naming the first file that differs.
    With allow, warn instead; returns the paths of the files that are new or changed
    (every file when the manifest is missing)."""
    if saved is None:
        if allow:
            return [f["path"] for f in current["files"]]
        raise UserError(f"{Path(run_dir) / CORPUS} is missing, so the text cannot be checked; "
                        f"pass --allow-corpus-change to resume anyway")
    if not isinstance(saved, dict) or not isinstance(saved.get("files"), list) or \
            not all(isinstance(f, dict) and "path" in f for f in saved["files"]):
        raise UserError(f"{Path(run_dir) / CORPUS} is damaged; restore it from a backup, "
                        f"or delete it and pass --allow-corpus-change")
    old = {f["path"]: f for f in saved["files"]}
    new = {f["path"]: f for f in current["files"]}
    changed = []
    for path in sorted(old.keys() | new.keys()):
        if old.get(path) != new.get(path):
            what = ("is new" if path not in old else "is gone" if path not in new else "has changed")
            if allow:
                print(f"warning: corpus file {path} {what} since run {run_dir.name} started", file=sys.stderr)
                changed += [path] if path in new else []
                continue
            raise UserError(f"corpus file {path} {what} since run {run_dir.name} started "
                            f"(see {run_dir / CORPUS}); pass --allow-corpus-change to continue on it")
    return changed


def _warn_unknown(corpus, changed, run_dir):
    """One line when new or changed text holds characters the run's vocabulary lacks:
    they all train as the one unknown symbol."""
    spans = [f for f in corpus.files if f.path in set(changed)]
    unknown = {f.path: corpus.unknown_count(f) for f in spans}
    share = {f.path: unknown[f.path] / (f.end - f.start) for f in spans if unknown[f.path]}
    if not share:
        return
    worst = sorted(share, key=share.get, reverse=True)
    print(f"warning: {sum(unknown.values()) / sum(f.end - f.start for f in spans):.1%} of the characters of the "
          f"new or changed text are not in run {run_dir.name}'s vocabulary and train as unknown: "
          + ", ".join(f"{path} ({share[path]:.1%})" for path in worst[:3])
          + (f" and {len(worst) - 3} more files" if len(worst) > 3 else ""), file=sys.stderr)

