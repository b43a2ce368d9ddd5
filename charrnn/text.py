"""The text side of the character RNN: vocabulary, corpus reading, validation split,
minibatch sequencing.

numpy and the standard library only (never TensorFlow), vectorised so that a corpus
of a gigabyte encodes in seconds.
"""

import bisect
import codecs
import collections
import glob
import hashlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from charrnn.config import VALIDATION_SPLITS
from charrnn.errors import UserError

UNKNOWN = "\ufffd"  # how the unknown symbol decodes
_SLICE = 1 << 22  # characters encoded per step: bounds the temporary arrays of encode()


def _code_points(text):
    """(N,) uint32 array of the code points of text (astral characters included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _count_chars(text):
    """{char: count} for text, vectorised."""
    if text.isascii():
        counts = np.bincount(np.frombuffer(text.encode("ascii"), np.uint8), minlength=128)
        cps = np.flatnonzero(counts)
        counts = counts[cps]
    else:
        cps, counts = np.unique(_code_points(text), return_counts=True)
    return {chr(cp): int(n) for cp, n in zip(cps.tolist(), counts.tolist())}


class Vocabulary:
    """A bijection between characters and integer codes; code 0 is the unknown symbol.

    `chars[i]` is the character of code i; `chars[0]` is UNKNOWN. Any character not in
    the vocabulary encodes to 0, and 0 decodes to UNKNOWN.
    """

    unk_index = 0

    def __init__(self, chars):
        """chars: the known characters in code order (codes 1, 2, ...), without UNKNOWN."""
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("a vocabulary holds single characters")
        if UNKNOWN in chars or len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct and exclude UNKNOWN")
        self.chars = [UNKNOWN] + chars
        cps = np.array([ord(c) for c in self.chars], np.uint32)  # code -> code point
        cps[0] = ord(UNKNOWN)
        self._decode_table = cps
        self._ascii_only = all(c.isascii() for c in chars)
        # code point -> code: a dense table up to the largest known code point, plus
        # one trailing 0 that every larger code point is clipped onto
        self._encode_table = np.zeros(int(cps[1:].max(initial=127)) + 2, self.dtype)
        self._encode_table[cps[1:]] = np.arange(1, len(self.chars), dtype=self.dtype)
        self._ascii_table = np.ascontiguousarray(self._encode_table[:128])

    @classmethod
    def from_counts(cls, counts, max_size=None):
        """Vocabulary of the counted characters, sorted by code point.

        max_size caps the number of symbols, UNKNOWN included: the max_size-1 most frequent
        characters are kept (ties broken by code point), the others become unknown.
        """
        items = [(c, n) for c, n in counts.items() if n > 0 and c != UNKNOWN]
        if max_size is not None:
            if max_size < 2:
                raise ValueError(f"max_size must be at least 2 (UNKNOWN plus one character), got {max_size}")
            items = sorted(items, key=lambda cn: (-cn[1], ord(cn[0])))[: max_size - 1]
        return cls(sorted((c for c, _ in items), key=ord))

    @classmethod
    def from_text(cls, text, max_size=None):
        """Vocabulary of the characters of text (see from_counts)."""
        counts = collections.Counter()
        for i in range(0, len(text), _SLICE):
            counts.update(_count_chars(text[i : i + _SLICE]))
        return cls.from_counts(counts, max_size)

    def __len__(self):
        """Number of symbols, UNKNOWN included."""
        return len(self.chars)

    @property
    def dtype(self):
        """The smallest unsigned integer type that holds every code."""
        n = len(self.chars)
        return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.uint32

    def encode(self, text):
        """(N,) array of codes for the N characters of text; unknown characters -> 0."""
        out = np.empty(len(text), self.dtype)
        for i in range(0, len(text), _SLICE):  # slices keep the temporary arrays small
            part = text[i : i + _SLICE]
            if part.isascii():
                out[i : i + len(part)] = self._ascii_table[np.frombuffer(part.encode("ascii"), np.uint8)]
            else:
                cps = np.minimum(_code_points(part), len(self._encode_table) - 1)
                out[i : i + len(part)] = self._encode_table[cps]
        return out

    def decode(self, codes):
        """The text of an array (or sequence) of codes, flattened."""
        codes = np.asarray(codes).ravel()
        if codes.size and (codes.min() < 0 or codes.max() >= len(self.chars)):
            raise ValueError(f"codes must lie in [0, {len(self.chars)}), got [{codes.min()}, {codes.max()}]")
        if self._ascii_only and codes.all():  # no UNKNOWN: one byte per character
            return self._decode_table.astype(np.uint8)[codes].tobytes().decode("ascii")
        return self._decode_table[codes].tobytes().decode("utf-32-le", "surrogatepass")

    def code_point_tables(self):
        """(encode, decode) int32 arrays for code that maps characters itself (the exported
        graph): encode[min(cp, len(encode) - 1)] is the code of code point cp, 0 when
        unknown; decode[code] is the code point of a code."""
        return self._encode_table.astype(np.int32), self._decode_table.astype(np.int32)

    def unknown_chars(self, text):
        """The distinct characters of text that would encode as unknown, by code point."""
        known = set(self.chars)
        return sorted(set(text) - known, key=ord)

    def to_json(self):
        return {"chars": self.chars[1:]}

    def fingerprint(self):
        """sha256 (hex) of the characters in code order: what a checkpoint records, so that a
        vocab.json with other characters or another order is noticed."""
        return hashlib.sha256("".join(self.chars).encode("utf-32-le", "surrogatepass")).hexdigest()

    @classmethod
    def from_json(cls, d):
        return cls(d["chars"])

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.chars == other.chars

    __hash__ = None

    def __repr__(self):
        return f"Vocabulary({len(self)} symbols: {''.join(self.chars[1:])!r})"


# ----------------------------------------------------------------------------
# reading a corpus


@dataclass(frozen=True)
class FileSpan:
    """Where one file of the corpus lies in Corpus.codes."""

    path: str  # as matched by the glob
    start: int  # char offset in Corpus.codes
    end: int
    size: int  # bytes on disk
    sha256: str




@dataclass
class Corpus:
    """A whole corpus encoded in one array, and its split into training and validation."""

    codes: np.ndarray  # (N,) uint8/uint16: all files concatenated in sorted path order
    vocab: Vocabulary
    files: list[FileSpan]
    train: np.ndarray  # view of codes[:cutoff]
    valid: np.ndarray  # view of codes[cutoff:], may be empty
    split: str = "none"  # the rule that chose valid: "files", "tail" or "none"

    def held_out(self) -> str:
        """What the validation text is, in words."""
        if self.split == "files":
            n = sum(f.start >= len(self.train) for f in self.files)
            return f"the last {n} file{'s' * (n > 1)}"
        return f"the last {len(self.valid) / len(self.codes):.0%} of the text" if len(self.valid) else "none"

    def unknown_count(self, span):
        """How many characters of a file (a FileSpan) encoded as unknown; counted a slice at a time."""
        return sum(int(np.count_nonzero(self.codes[i : min(i + _SLICE, span.end)] == Vocabulary.unk_index))
                   for i in range(span.start, span.end, _SLICE))

    def file_at(self, offset):
        """The FileSpan that the character at `offset` of codes came from."""
        if not 0 <= offset < len(self.codes):
            raise IndexError(f"offset {offset} outside the corpus of {len(self.codes)} characters")
        return self.files[bisect.bisect_right(self.files, offset, key=lambda f: f.start) - 1]


def find_files(globs):
    """Sorted, deduplicated files matched by one or more glob patterns (`**` recurses, `~` expands)."""
    if isinstance(globs, str):
        globs = [globs]
    found = {}  # real path -> path as matched
    for pattern in globs:
        expanded = os.path.expanduser(pattern)
        matches = glob.glob(expanded, recursive=True)
        if not matches and os.path.exists(expanded):  # a literal name with [ ] * ? in it
            matches = [expanded]
        if not matches:
            raise UserError(
                f"no file matches '{pattern}' (relative to {os.getcwd()}): check the path, "
                f"and quote the pattern so that the shell passes it unexpanded, e.g. 'texts/**/*.txt'"
            )
        files = [m for m in matches if os.path.isfile(m)]
        broken = [m for m in matches if os.path.islink(m) and not os.path.exists(m)]
        if not files and broken:
            raise UserError(f"'{broken[0]}' is a broken symbolic link: point it at a text file or remove it")
        if not files:
            d = pattern.rstrip("/\\")
            raise UserError(f"'{pattern}' matches only directories: give a file pattern such as '{d}/*.txt' or '{d}/**/*.txt'")
        for m in files:
            found.setdefault(os.path.realpath(m), m)
    return sorted(set(found.values()))


# Bytes that no text holds: NUL and the C0 controls but tab, the line and page breaks,
# SUB (a DOS end of file) and ESC (terminal colours).
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1a\x1b")
_NOT_CONTROL = bytes(sorted(set(range(256)) - set(_CONTROL)))


class BinaryFile(Exception):
    """A file holds a byte that no text holds (_CONTROL), at `offset`."""

    def __init__(self, offset, byte):
        super().__init__(f"byte 0x{byte:02x} at offset {offset:,}")


def _text_chunks(path, chunk_size):
    """Yield (raw bytes, decoded text) chunks of a UTF-8 file, with a leading BOM stripped
    and "\\r\\n" turned into "\\n", even when a character or a "\\r\\n" straddles two chunks.
    Raises BinaryFile at the first control byte (checked in every chunk, before decoding)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file read before this chunk
    at_start, held_cr = True, ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_size)
            controls = raw.translate(None, _NOT_CONTROL)  # C speed; empty for text
            if controls:
                first = min(raw.find(b) for b in set(controls))
                raise BinaryFile(offset + first, raw[first])
            pending = len(decoder.getstate()[0])  # bytes of a split character, from the last chunk
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}: invalid UTF-8 at byte {offset - pending + e.start}; "
                    f"convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8 IN > OUT"
                ) from None
            offset += len(raw)
            text = held_cr + text
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            held_cr = "\r" if raw and text.endswith("\r") else ""  # its "\n" may be in the next chunk
            text = text[: len(text) - len(held_cr)].replace("\r\n", "\n")
            yield raw, text
            if not raw:
                return


def read_corpus(globs, vocab=None, max_vocab=None, validation="auto", tail_fraction=0.1, chunk_size=16 << 20):
    """Read and encode every file matched by globs (sorted by path) into one Corpus.

    Files are decoded as UTF-8; a leading BOM is dropped and "\\r\\n" becomes "\\n".
    Empty files and binary files (a NUL or another control byte anywhere, see _CONTROL)
    are skipped with a warning.
    vocab: the vocabulary to encode with (when resuming); None learns one from the corpus,
    keeping at most max_vocab symbols. validation: "files" holds out the last files
    (validation_cutoff), "tail" the last tail_fraction of the characters, "none" nothing,
    "auto" the files when that rule holds any out (more than 5 files), else the tail.

    Memory: files are streamed in chunks of chunk_size bytes, twice. Pass 1 counts the
    characters (and their frequencies and the sha256); pass 2 encodes each chunk into one
    array allocated at its final size. Peak memory is that array (1 byte a character for a
    vocabulary of up to 256 symbols) plus a few buffers the size of one chunk; the text is
    never held whole as a Python string.
    """
    if validation not in VALIDATION_SPLITS:
        raise ValueError(f"validation must be one of {VALIDATION_SPLITS}, got {validation!r}")
    if not 0 <= tail_fraction < 1:
        raise ValueError(f"tail_fraction must lie in [0, 1), got {tail_fraction}")

    kept, counts = _scan_files(globs, chunk_size, count=vocab is None)
    if vocab is None:
        vocab = Vocabulary.from_counts(counts, max_vocab)
    codes, files = _encode_files(kept, vocab, chunk_size)
    cutoff, split = _split(files, len(codes), validation, tail_fraction)
    return Corpus(codes, vocab, files, train=codes[:cutoff], valid=codes[cutoff:], split=split)


def _scan_files(globs, chunk_size, count):
    """Pass 1 of read_corpus: ([(path, characters, size, sha256)] of the files kept, the
    counts of their characters when count). Warns of each empty or binary file skipped;
    a UserError when none is left, or a file cannot be read."""
    counts = collections.Counter()
    kept, skipped = [], []
    for path in find_files(globs):
        try:
            size, n_chars, sha, file_counts = _scan_file(path, chunk_size, count)
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        except BinaryFile as e:
            skipped.append(f"skipping binary file {path} ({e}; if it is UTF-16 text, convert it to UTF-8)")
            continue
        if n_chars == 0:
            skipped.append(f"skipping empty file {path}")
            continue
        counts.update(file_counts)
        kept.append((path, n_chars, size, sha))
    if not kept:
        raise UserError(f"every file matched by {' '.join(map(repr, _as_list(globs)))} was empty or binary: point to UTF-8 text files")
    for message in skipped:  # when every file is skipped, the error alone says so, in one line
        print(f"warning: {message}", file=sys.stderr)
    return kept, counts


def _encode_files(kept, vocab, chunk_size):
    """Pass 2 of read_corpus: the files' codes in one array allocated at its final size,
    and a FileSpan a file."""
    codes = np.empty(sum(n for _, n, _, _ in kept), vocab.dtype)  # (N,)
    files, pos = [], 0
    for path, n_chars, size, sha in kept:
        end = _encode_file(codes, pos, path, n_chars, vocab, chunk_size)
        files.append(FileSpan(path, pos, end, size, sha))
        pos = end
    return codes, files


def _split(files, total_len, validation, tail_fraction):
    """(where the held-out characters begin, the split read_corpus made: files, tail or none)."""
    cutoff, split = total_len, "none"
    if validation in ("files", "auto"):
        cutoff = validation_cutoff(files, total_len)
        split = "files" if cutoff < total_len else "none"
    if validation == "tail" or (validation == "auto" and split == "none"):
        cutoff, split = int(total_len * (1 - tail_fraction)), "tail"
    return cutoff, split


def _scan_file(path, chunk_size, count):
    """Pass 1 of read_corpus for one file: (its size in bytes, its characters, its sha256
    in hex, the counts of its characters when count). Raises BinaryFile for a binary file,
    OSError where it cannot be read."""
    size = os.path.getsize(path)
    sha, n_chars, counts = hashlib.sha256(), 0, collections.Counter()
    if size:  # an empty file is not opened
        for raw, text in _text_chunks(path, chunk_size):
            sha.update(raw)
            n_chars += len(text)
            if count:
                for i in range(0, len(text), _SLICE):
                    counts.update(_count_chars(text[i : i + _SLICE]))
    return size, n_chars, sha.hexdigest(), counts


def _encode_file(codes, start, path, n_chars, vocab, chunk_size):
    """Pass 2 of read_corpus for one file: its n_chars characters (pass 1's count) encoded
    into codes from start. Returns where they end; a file that changed since pass 1 is a
    one-line error."""
    pos = start
    try:
        for _, text in _text_chunks(path, chunk_size):
            if pos + len(text) > start + n_chars:
                break
            codes[pos : pos + len(text)] = vocab.encode(text)
            pos += len(text)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except BinaryFile:
        pos = -1  # it changed since pass 1
    if pos != start + n_chars:
        raise UserError(f"{path} changed while it was being read: run again once it is stable")
    return pos


def _as_list(globs):
    return [globs] if isinstance(globs, str) else list(globs)


def validation_cutoff(files, total_len):
    """Character offset where validation starts: the last whole files, roughly 90K
    characters but no more than 10% of the text and no more than 1 file in 5
    (so no validation at all for 5 files or fewer). The original project's rule, with
    its stated intent for exactly 5 files: its code, `len(files) // 5`, held one out."""
    nb_books1 = _books_to_exceed(files, total_len // 10)
    nb_books2 = _books_to_exceed(files, 90 * 1024)
    nb_books3 = len(files) // 5 if len(files) > 5 else 0
    nb_books = min(nb_books1, nb_books2, nb_books3)
    return total_len if nb_books == 0 else files[-nb_books].start


def _books_to_exceed(files, limit):
    """How many files, counted from the last, it takes to exceed limit characters."""
    length, nb_books = 0, 0
    for f in reversed(files):
        length += f.end - f.start
        nb_books += 1
        if length > limit:
            break
    return nb_books


# ----------------------------------------------------------------------------
# minibatches


def batches_per_epoch(data_len, batch_size, sequence_size):
    """Number of whole (batch_size, sequence_size) batches in data_len characters
    (one character is kept back as the target of the last input)."""
    return (data_len - 1) // (batch_size * sequence_size)


def require_batches(data_len, batch_size, sequence_size):
    """batches_per_epoch, or a UserError when the text is too short for one batch."""
    nb_batches = batches_per_epoch(data_len, batch_size, sequence_size)
    if nb_batches <= 0:
        raise UserError(f"one batch needs {batch_size * sequence_size + 1:,} training characters "
                        f"(--batch-size {batch_size} x --seqlen {sequence_size} + 1) but there are "
                        f"{data_len:,}; lower --batch-size or --seqlen, or add text")
    return nb_batches


def rnn_minibatch_sequencer(raw_data, batch_size, sequence_size, nb_epochs, start_epoch=0, start_batch=0):
    """Yield (x, y, epoch) training batches from a sequence of codes, so that each row
    continues the text of the same row of the previous batch.

    The data is cut into batch_size rows of equal length (the remainder is dropped) and
    every batch takes the next sequence_size columns: x and y are (batch_size, sequence_size)
    and y is x shifted by one character (the targets). Why rows continue: the RNN's final
    state after one batch is the initial state of the next (truncated backpropagation
    through time), so row i of batch k+1 must be the text that follows row i of batch k.
    Across epochs the rows are rolled by one, so row i of the new epoch continues row i+1
    of the old, which is where row i's text went on; exactly one row per epoch boundary
    breaks: the one that wraps around from the end of the data to its start.

    No copy of raw_data is made (only each small batch is copied by the roll).
    start_epoch, start_batch: resume at that position without replaying earlier batches
    (a start_batch past the end of an epoch carries over into the following epochs).
    """
    data = np.asarray(raw_data)  # (N,)
    data_len = data.shape[0]
    nb_batches = require_batches(data_len, batch_size, sequence_size)
    if start_epoch < 0 or start_batch < 0:
        raise ValueError(f"start_epoch and start_batch must be >= 0, got {start_epoch}, {start_batch}")
    start_epoch, start_batch = start_epoch + start_batch // nb_batches, start_batch % nb_batches
    rounded_data_len = nb_batches * batch_size * sequence_size
    xdata = np.reshape(data[0:rounded_data_len], [batch_size, nb_batches * sequence_size])  # view
    ydata = np.reshape(data[1 : rounded_data_len + 1], [batch_size, nb_batches * sequence_size])  # view
    for epoch in range(start_epoch, nb_epochs):
        for batch in range(start_batch if epoch == start_epoch else 0, nb_batches):
            x = xdata[:, batch * sequence_size : (batch + 1) * sequence_size]  # (B, T)
            y = ydata[:, batch * sequence_size : (batch + 1) * sequence_size]  # (B, T)
            x = np.roll(x, -epoch, axis=0)  # continue the text from epoch to epoch
            y = np.roll(y, -epoch, axis=0)
            yield x, y, epoch
