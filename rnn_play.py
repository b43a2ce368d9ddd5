"""Generate text from a trained checkpoint.

    python3 rnn_play.py                         # 1000 characters from the newest run's best checkpoint
    python3 rnn_play.py RUN -n 0                # stream until Ctrl-C
    python3 rnn_play.py RUN --prime "ROMEO:" --temperature 0.7 --seed 1
    python3 rnn_play.py checkpoints/RUN/best/ckpt-1500 --samples 4
    python3 rnn_play.py RUN --export exported/   # a SavedModel that generates on its own
    python3 rnn_play.py RUN --export-web page/  # a web page that generates in any browser
    python3 rnn_play.py RUN --eval held-out.txt  # loss, bits/char and accuracy on a text
    python3 rnn_play.py --list                    # the runs, newest first

The model is rebuilt from the run's saved configuration and vocabulary, so no
flag has to match what was trained. Exit codes: 0 done, 2 bad input.
"""

import argparse
import contextlib
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from charrnn.cli import ArgumentParser, first_run
from charrnn.config import SamplingConfig, flag
from charrnn.errors import UserError, safe_console

FLUSH_SECONDS = 0.05
MAX_SAMPLES = 10_000  # --samples are one batch: its states and logits are held in memory at once
# The flags a web page starts its form with (its option names, charrnn/webpage/charrnn.js):
# those given with --export-web, the others keep the page's own defaults.
# --prime and --prime-file both fill in its prime (read_prime).
WEB_OPTIONS = {"length": "length", "temperature": "temperature", "top_k": "topK", "top_p": "topP",
               "argmax": "argmax", "seed": "seed"}
PROGRESS_DELAY = 1.0  # seconds before a progress bar shows: none for what is quick


def make_parser():
    """The command line; each help text ends with its default, written out where it means something."""
    p = ArgumentParser(prog="rnn_play.py", description="Generate text from a trained character model.")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="run name, run folder or checkpoint prefix such as RUN/ckpt-3000 or RUN/best; a run "
                        "is read from its best checkpoint by validation loss, else its newest "
                        "(default: the newest run under --checkpoint-dir)")
    p.add_argument("-n", "--length", type=int, default=1000, metavar="N",
                   help="characters to generate after the prime; 0 streams until Ctrl-C (default: %(default)s)")
    p.add_argument("--prime", default="", metavar="TEXT",
                   help="text to warm the state up on, so the sample continues it; echoed first "
                        "(default: none, the model starts from a zero state)")
    p.add_argument("--prime-file", metavar="PATH",
                   help="read the prime from a UTF-8 file, for a prime longer than a command line; "
                        "- reads standard input")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="below 1 plays safe, above 1 takes risks; 1 samples the model as trained "
                        "(default: %(default)s)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sample only among the K most likely characters (the original project's topn): "
                        "cuts the unlikely tail that turns words into typos (default: no limit)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="sample only among the most likely characters whose probabilities add up to P: "
                        "like --top-k, but the cut follows how sure the model is (default: 1, no limit)")
    p.add_argument("--argmax", action="store_true",
                   help="always take the most likely character (greedy): the same text every time, "
                        "which soon repeats itself")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="the same seed and checkpoint give the same text in every run, to compare "
                        "settings or share a sample (default: random, printed)")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="generate N independent samples as one batch, for about the time of one; "
                        "printed one after the other (default: %(default)s)")
    p.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR",
                   help="where rnn_train.py wrote its runs (default: %(default)s)")
    p.add_argument("--list", action="store_true",
                   help="list the runs under --checkpoint-dir (newest first: model, data, step, "
                        "best validation loss) and exit")
    p.add_argument("--export", metavar="DIR",
                   help="instead of generating, write a TensorFlow SavedModel to the new folder DIR, "
                        "which generates without this project (TensorFlow Serving, any TensorFlow "
                        "program): a text-in, text-out `generate` signature (top-k/top-p/argmax fixed "
                        "from these flags) and a bare `step` signature; see export.py")
    p.add_argument("--export-web", metavar="DIR",
                   help="instead of generating, write a static web page to the new folder DIR that generates "
                        "text in any browser, with no server: open DIR/index.html; the sampling flags given "
                        "(-n, --prime or --prime-file, --temperature, --top-k, --top-p, --argmax, --seed) fill "
                        "in its form; "
                        "see web.py")
    p.add_argument("--web-weights", choices=("float32", "float16", "int8"), default="float32",
                   help="how --export-web stores the weights: float16 halves the page and int8 quarters it, "
                        "the arithmetic stays float32 (default: %(default)s, the exact weights)")
    p.add_argument("--eval", metavar="FILE",
                   help="instead of generating, score the model on the text of FILE (or a glob of files, a "
                        "named pipe, or - for standard input): "
                        "loss in nats, bits/char and accuracy over every character, read as training "
                        "validates (long rows from a zero state, the state carried); characters outside "
                        "the run's vocabulary count as its unknown symbol")
    return p


def read_prime(args):
    if args.prime_file is None:
        return args.prime
    try:
        if args.prime_file == "-":
            return sys.stdin.buffer.read().decode("utf-8-sig")
        with open(args.prime_file, encoding="utf-8-sig") as f:  # a leading BOM is not text
            return f.read()
    except OSError as e:
        raise UserError(f"--prime-file {args.prime_file}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--prime-file {args.prime_file} is not UTF-8 (byte {e.start}); "
                        f"convert it, e.g. with iconv") from None


# The flags each way of running reads (dests); another flag given would do nothing, so it is refused.
GENERATING = {"checkpoint", "checkpoint_dir", "length", "prime", "prime_file", "temperature", "top_k", "top_p",
              "argmax", "seed", "samples"}
READS = {None: GENERATING, "list": {"list", "checkpoint_dir"},
         "eval": {"eval", "checkpoint", "checkpoint_dir"},
         "export": {"export", "checkpoint", "checkpoint_dir", "top_k", "top_p", "argmax"},
         "export_web": (GENERATING - {"samples"}) | {"export_web", "web_weights"}}
# ... and why, where it is not plain: {mode: (the flags it explains, why)}
WHY_UNUSED = {"export": ({"prime", "prime_file", "length", "temperature", "seed"},
                         " (the SavedModel's generate takes the prime, length, temperature and seed when called)"),
              "export_web": ({"samples"}, " (the page generates one sample at a time)")}
# What --argmax leaves unread where it is fixed (the page's form can untick it, so there they are kept).
GREEDY_UNUSED = {None: {"temperature", "top_k", "top_p", "seed"}, "export": {"top_k", "top_p"}}


def check_used(args, given):
    """Refuse two ways of running at once, and a flag given where it does nothing
    (--temperature with --eval: a score samples nothing)."""
    modes = [m for m in READS if m and getattr(args, m) not in (None, False)]
    if len(modes) > 1:
        raise UserError(f"{', '.join(map(flag, modes))} are given together; pass one of them")
    mode = modes[0] if modes else None
    unused = sorted(given - READS[mode])
    if unused:
        explained, why = WHY_UNUSED.get(mode, (set(), ""))
        raise does_nothing(unused, (f"with {flag(mode)}" if mode else "when generating")
                           + (why if explained.issuperset(unused) else ""))
    greedy = sorted(given & GREEDY_UNUSED.get(mode, set())) if args.argmax else []
    if greedy:
        raise does_nothing(greedy, "with --argmax, which always takes the most likely character", " or --argmax")


def does_nothing(dests, where, or_drop=""):
    """The error for flags (dests) given where they do nothing."""
    names = ", ".join("RUN_OR_CHECKPOINT" if dest == "checkpoint" else flag(dest) for dest in dests)
    one = len(dests) == 1
    return UserError(f"{names} do{'es' * one} nothing {where}; drop {'it' if one else 'them'}{or_drop}")


def check(args, given):
    """Reject bad flags before TensorFlow loads; return the SamplingConfig. given: the
    flags given (given_flags)."""
    check_used(args, given)
    if {"prime", "prime_file"} <= given:
        raise UserError("--prime and --prime-file are both given; pass one of them")
    if args.length < 0:
        raise UserError(f"--length must be >= 0 (got {args.length})")
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1 (got {args.samples})")
    if args.samples > MAX_SAMPLES:
        raise UserError(f"--samples must be at most {MAX_SAMPLES:,} (got {args.samples:,}): they are generated as "
                        f"one batch, in memory; run the command again for more")
    if args.samples > 1 and args.length == 0:
        raise UserError("--samples N needs a finite --length: samples are printed one after the other")
    if args.seed is not None and not -2 ** 63 <= args.seed < 2 ** 63:
        raise UserError(f"--seed must fit in 64 bits (got {args.seed})")
    if args.export_web is not None and args.seed is not None and not abs(args.seed) < 2 ** 53:
        raise UserError(f"--seed {args.seed} is too large for a web page, whose integers are exact below 2**53; "
                        f"give a seed of at most {2 ** 53 - 1:,} in size")
    for name in ("export", "export_web"):
        check_new_folder(flag(name), getattr(args, name))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    return SamplingConfig(args.temperature, args.top_k, args.top_p, args.argmax, seed).check()


def check_new_folder(flag, directory):
    """Refuse, before TensorFlow loads, a folder that an export could not be written to:
    no name, one under a file, or one that exists and is not empty (the export is renamed
    into place, so a folder filled meanwhile fails that rename: nothing in it is lost)."""
    if directory is None:
        return
    if not directory.strip():
        raise UserError(f"{flag} needs the name of a new folder to write (got {directory!r})")
    target = Path(directory)
    try:
        for parent in target.absolute().parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"{flag} {directory}: {parent} is a file, not a folder; name a new folder elsewhere")
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UserError(f"{flag} {directory}: exists and is not an empty folder; name a new folder")
    except OSError as e:
        raise UserError(f"{flag} {directory[:200]}: {e.strerror}; name another folder") from None


def given_flags(argv):
    """The names of the flags given in argv (dests), not left at their defaults."""
    parser = make_parser()
    for action in parser._actions:  # argparse's defaults, left out of the namespace
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def web_options(args, given, prime):
    """The page's starting options ({charrnn.js option: value}) from the sampling flags given."""
    options = {WEB_OPTIONS[name]: getattr(args, name) for name in given & WEB_OPTIONS.keys()}
    if given & {"prime", "prime_file"}:
        options["prime"] = prime
    return options


def play(args, sampling, given=frozenset()):
    from charrnn import tf_setup
    tf_setup.import_tensorflow()
    from charrnn import catalog
    from charrnn.sampling import Generator

    if args.list:
        lines = catalog.list_runs(args.checkpoint_dir)
        if not lines:
            raise UserError(f"no run under {args.checkpoint_dir}/; train a first model in minutes with "
                            f"`{first_run(args.checkpoint_dir)}`")
        write("\n".join(lines) + "\n")
        return 0
    prime = read_prime(args)
    model, vocab, run_dir, prefix = catalog.load_for_generation(args.checkpoint, args.checkpoint_dir)
    if args.eval is not None:
        return evaluate(args.eval, model, vocab, run_dir, prefix)
    if args.export_web is not None:
        from charrnn import web
        target = web.export_web(model, vocab, run_dir, prefix, args.export_web, args.web_weights,
                                web_options(args, given, prime))
        print(f"wrote a web page of {catalog.describe(run_dir, prefix)} to {target}: open {target / 'index.html'}",
              file=sys.stderr)
        return 0
    if args.export is not None:
        from charrnn import export  # only here: it is not needed to generate
        target = export.export(model, vocab, run_dir, sampling, args.export)
        print(f"exported {catalog.describe(run_dir, prefix)} to {target}: "
              f"tf.saved_model.load('{target}').generate(...)", file=sys.stderr)
        return 0
    print(f"generating from {catalog.describe(run_dir, prefix)}, seed {sampling.seed}", file=sys.stderr)
    unknown = vocab.unknown_chars(prime)
    if unknown:
        print(f"warning: the prime has characters this model never saw, read as unknown: "
              f"{printable(unknown, sys.stderr.encoding)}", file=sys.stderr)
    generator = Generator(model, vocab, sampling)
    primed = priming_progress(len(prime))
    if args.samples == 1:
        write(prime)
        last_flush = time.monotonic()
        for ids in generator.stream(prime, args.length, primed=primed):
            text = vocab.decode(ids[0])
            sys.stdout.write(text)
            if "\n" in text or time.monotonic() - last_flush > FLUSH_SECONDS:
                sys.stdout.flush()
                last_flush = time.monotonic()
        if sys.stdout.isatty():  # end the line for the shell prompt; a pipe gets exactly -n characters
            write("\n")
    else:
        rows = [[] for _ in range(args.samples)]
        for ids in generator.stream(prime, args.length, samples=args.samples, primed=primed):
            for row, r in zip(rows, ids):
                row.append(vocab.decode(r))
        for i, row in enumerate(rows):
            write(f"--- sample {i + 1} ---\n{prime}{''.join(row)}\n")
    return 0


def progress(what, total, unit):
    """A progress bar on stderr, as training shows one: only on a terminal, and only for
    what lasts more than PROGRESS_DELAY seconds; erased when done."""
    from tqdm import tqdm
    return tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "char", file=sys.stderr, dynamic_ncols=True,
                disable=None, delay=PROGRESS_DELAY, leave=False)


def priming_progress(length):
    """The primed(n) callback of Generator.stream for a prime of `length` characters
    (None for a prime of one character or none, which is read at once)."""
    if length < 2:
        return None
    bar = progress("reading the prime", length, "char")

    def primed(n):
        bar.update(n - bar.n)
        if n >= length:
            bar.close()
    return primed


def printable(chars, encoding):
    """Characters named for a message: each quoted, or as its code point (U+00DC)
    where the console's encoding cannot show it."""
    names = []
    for c in chars:
        name = repr(c)
        try:
            name.encode(encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):
            name = f"U+{ord(c):04X}"
        names.append(name)
    return ", ".join(names)


def evaluate(path, model, vocab, run_dir, prefix):
    """Print the model's loss, bits/char and accuracy on the text of path, scored as the
    run's validation scores its held-out text (steps.make_validate, the run's --seqlen)."""
    import numpy as np
    from charrnn import catalog, run_files
    from charrnn import steps

    seqlen = run_files.load_run_files(run_dir)[0].get("training", {}).get("seqlen")
    if not isinstance(seqlen, int) or seqlen < 1:
        raise UserError(f"{Path(run_dir) / run_files.CONFIG} has no valid training seqlen; restore it from a backup")
    codes = read_eval_text(path, vocab)
    if len(codes) < 2:
        raise UserError(f"--eval {path}: the text must hold at least 2 characters (the first is not predicted)")
    # make_validate calls stop() before each chunk of VAL_ROWS rows (fewer on a short text) x seqlen
    rows = max(1, min(steps.VAL_ROWS, (len(codes) - 1) // steps.VAL_ROW_CHARS))
    with progress(f"scoring {path}", -(-(len(codes) - 1) // (rows * seqlen)), "chunk") as bar:
        loss, accuracy = steps.make_validate(model, seqlen)(codes, stop=lambda: bar.update() and False)
    unknown = int(np.count_nonzero(codes == vocab.unk_index))
    print(f"scored {path} with {catalog.describe(run_dir, prefix)}: {len(codes) - 1:,} characters predicted, "
          f"{unknown:,} of the text's {len(codes):,} outside the run's vocabulary (read as unknown)", file=sys.stderr)
    write(f"loss {loss:.4f} nats/char  {loss / math.log(2):.4f} bits/char  accuracy {accuracy:.2%}\n")
    return 0


def read_eval_text(path, vocab):
    """The codes of --eval's text: a file or a glob as training reads its corpus; standard
    input (-) and a named pipe, which can be read only once, are copied to a temporary file first."""
    import txt_utils
    if path != "-" and not (os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode)):
        return txt_utils.read_corpus([path], vocab=vocab, validation="none").codes
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "eval.txt")
        try:
            with open(copy, "wb") as out, contextlib.ExitStack() as stack:
                source = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
                shutil.copyfileobj(source, out)
        except OSError as e:
            raise UserError(f"--eval {path}: cannot read it into {tmp} ({e.strerror})") from None
        try:
            return txt_utils.read_corpus([copy], vocab=vocab, validation="none").codes
        except UserError as e:
            raise UserError(str(e).replace(copy, "standard input" if path == "-" else path)) from None


def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv=None):
    safe_console()
    args = make_parser().parse_args(argv)
    try:
        given = given_flags(argv)
        return play(args, check(args, given), given)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at devnull so the final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
