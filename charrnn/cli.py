"""What the scripts share on the command line: the commands they print, and their parser.

    command(script, *args)      a command line that runs as printed where the user is
    first_run(checkpoint_dir)   the command of a quick first run, for "no checkpoint" errors
    tensorboard_command(logdir) the same for TensorBoard
    ArgumentParser              argparse, with a one-line error that names the closest flags

A printed command is only useful if pasting it works: it names the interpreter
that runs this process (often a project's .venv that no shell has activated), or
the make target when the process was started by one. Standard library only.
"""

import argparse
import difflib
import os
import shlex
import shutil
import sys
from pathlib import Path

MAKE_VARIABLE = "CHARRNN_MAKE"  # set by the Makefile's targets: their users are told make commands
ROOT = Path(__file__).resolve().parent.parent  # where the scripts are
# The make target of each script (Makefile), and the --preset that has its own target.
MAKE_TARGETS = {"rnn_play.py": "play", "rnn_train.py": "train"}
PRESET_TARGETS = {"quick", "quality"}


def command(script, *args):
    """The command line that runs `script` (a file at the project's root) with args, as the
    user can paste it: `make TARGET ARGS="..."` under make, else this interpreter and the
    script as paths from the current folder."""
    made = _make_command(script, args)
    if made:
        return made
    return shlex.join([python(), shown(ROOT / script), *map(str, args)])


def first_run(checkpoint_dir="checkpoints"):
    """The command of a first, quick run (minutes on a CPU; the default run takes hours)."""
    where = () if str(checkpoint_dir) == "checkpoints" else ("--checkpoint-dir", str(checkpoint_dir))
    return command("rnn_train.py", "--preset", "quick", *where)


def tensorboard_command(logdir):
    """The command that shows the curves of logdir: make tensorboard, this environment's
    tensorboard, or the module run by this interpreter."""
    if os.environ.get(MAKE_VARIABLE) and logdir == "log":
        return "make tensorboard"
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.is_file() and os.access(beside, os.X_OK):
        on_path = shutil.which("tensorboard")
        program = "tensorboard" if on_path and _same_file(on_path, beside) else _program(beside)
        return shlex.join([program, f"--logdir={logdir}"])
    return shlex.join([python(), "-m", "tensorboard.main", f"--logdir={logdir}"])


def python():
    """This interpreter as a command: python3 when that is what the shell finds, else its path."""
    on_path = shutil.which("python3")
    if on_path and _same_file(on_path, sys.executable):
        return "python3"
    return _program(sys.executable)


def shown(path):
    """A path as short as it can be written from the current folder: relative when inside it."""
    path = Path(os.path.abspath(path))
    try:
        relative = path.relative_to(os.getcwd())
    except ValueError:
        return str(path)
    return str(relative)


def _program(path):
    """A program's path as a shell runs it: ./NAME for one in the current folder."""
    path = shown(path)
    return path if "/" in path else f"./{path}"


def _same_file(a, b):
    """The same interpreter: the same binary in the same folder (a venv's python links to the
    system's, but it is another environment)."""
    a, b = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return os.path.realpath(a.parent) == os.path.realpath(b.parent) and os.path.realpath(a) == os.path.realpath(b)


def _make_command(script, args):
    """`make TARGET ARGS="..."` when the process came from make and a target runs script; None
    when there is none, or the arguments could not pass through make and a double-quoted string."""
    target = MAKE_TARGETS.get(script)
    if not os.environ.get(MAKE_VARIABLE) or target is None:
        return None
    args = [str(a) for a in args]
    if script == "rnn_train.py" and args[:1] == ["--preset"] and args[1:2] and args[1] in PRESET_TARGETS:
        target, args = args[1], args[2:]
    joined = shlex.join(args)
    if any(c in joined for c in '"$`\\'):
        return None
    return f'make {target} ARGS="{joined}"' if args else f"make {target}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, without the usage: a mistyped flag is named
    with the closest flags the parser knows, and --help is pointed at."""

    def error(self, message):
        flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        if message.startswith("unrecognized arguments: "):
            words = message.split(": ", 1)[1].split()
            unknown = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            hints = [f"{u} (did you mean {' or '.join(close)}?)" if close else u
                     for u in unknown for close in [difflib.get_close_matches(u, flags, n=2, cutoff=0.6)]]
            message = f"unknown flag{'s' * (len(unknown) > 1)} {', '.join(hints)}" if unknown else message
        script = Path(self.prog).name
        self.exit(2, f"error: {message}; {command(script, '--help')} lists every flag\n")
