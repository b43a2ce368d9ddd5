"""The web page export (rnn_play.py --export-web, charrnn/web.py), run in headless Chromium."""

import functools
import http.server
import json
import os
import re
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

from charrnn import web
from charrnn.config import ModelConfig
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.text import Vocabulary
from test_suite.helpers import files_of, play, quiet_train, tf, tiny

UNICODE = "abc de\nfgh.,;:'\"éßΩж中文🙂\t"  # astral, CJK, quotes, a tab
HOSTILE = "</script><img src=x onerror=alert(1)>&\"'\u2028\u2029\0`${}\\"
INFO = {"name": "r", "checkpoint": "r/ckpt-1", "step": 1, "best_validation_loss": 2.5}


def random_model(vocab, seed=0, **config):
    """A model with random weights, the biases too, so every weight's place is tested; scaled
    by 1/sqrt(rows) so the recurrence does not amplify float32's roundings into chaos."""
    model = CharRNN(ModelConfig(vocab_size=len(vocab), dropout=0.0, **config), "fused")
    rng = np.random.default_rng(seed)
    for variable in model.named_variables().values():
        scale = 0.3 if len(variable.shape) == 1 else 0.8 / np.sqrt(variable.shape[0])
        variable.assign(rng.normal(0, scale, variable.shape).astype(np.float32))
    return model


def python_probabilities(model, vocab, text):
    """[len(text), V]: the model's next-character distribution after each character of text."""
    logits, _ = model(tf.constant(vocab.encode(text).astype(np.int32)[None]), None)
    return tf.nn.softmax(logits[0]).numpy()


def some_text(vocab, n, seed=0):
    chars = vocab.chars[1:]
    return "".join(chars[i] for i in np.random.default_rng(seed).integers(0, len(chars), n))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # not a line on stderr per request
        pass


class WebPageTest(unittest.TestCase):
    """One headless Chromium for the class; skipped, saying why, where there is none."""

    @classmethod
    def setUpClass(cls):
        cls.holder = tempfile.TemporaryDirectory()
        cls.tmp = cls.holder.name
        try:
            cls.browser = web.open_chromium(os.path.join(cls.tmp, "profile"))
        except RuntimeError as e:
            cls.holder.cleanup()
            raise unittest.SkipTest(f"no headless Chromium to run the page in: {e}")
        cls.pages = 0

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.holder.cleanup()

    def export(self, model, vocab, info=INFO, storage="float32"):
        type(self).pages += 1
        return web.write_page(model, vocab, info, os.path.join(self.tmp, f"page{self.pages}"), storage)

    def open(self, folder):
        self.browser.get(Path(folder, "index.html").as_uri())  # file://, as a user opens it
        return self.browser

    def page_probabilities(self, text, wasm=True):
        return np.array(self.browser.execute_script(
            "return CharRNN.fromPage(document, {wasm: arguments[1]}).probabilities(arguments[0], {each: true})",
            text, wasm))


class TestWebModel(WebPageTest):
    def test_the_page_s_probabilities_equal_python_s_for_every_cell(self):
        vocab = Vocabulary(UNICODE)
        text = some_text(vocab, 200)
        for config in (dict(cell="gru", layers=2, units=16), dict(cell="lstm", layers=3, units=12, embedding=5),
                       dict(cell="rnn", layers=1, units=24), dict(cell="gru", layers=1, units=33, embedding=9)):
            with self.subTest(**config):
                model = random_model(vocab, **config)
                self.open(self.export(model, vocab))
                expected = python_probabilities(model, vocab, text)  # [200, V]
                np.testing.assert_allclose(self.page_probabilities(text), expected, rtol=0, atol=1e-5)
                self.assertEqual(self.browser.execute_script("return model.engine"), "WebAssembly SIMD")
        # the plain JavaScript matvec, where WebAssembly SIMD is missing, computes the same
        np.testing.assert_allclose(self.page_probabilities(text, wasm=False), expected, rtol=0, atol=1e-5)
        # the page's loss on a text: the mean of -log p(next character)
        ids = vocab.encode(text)
        loss = -np.mean(np.log(expected[np.arange(len(text) - 1), ids[1:]]))
        self.assertAlmostEqual(self.browser.execute_script("return model.loss(arguments[0])", text), loss, delta=1e-5)

    def test_float16_and_int8_pages_compute_with_the_stored_weights(self):
        vocab = Vocabulary(UNICODE)
        text = some_text(vocab, 50, seed=1)
        model = random_model(vocab, cell="gru", layers=2, units=16, embedding=4)
        sizes = {}
        for storage in ("float16", "int8"):
            with self.subTest(storage=storage):
                folder = self.export(model, vocab, storage=storage)
                sizes[storage] = (folder / "weights.bin").stat().st_size
                stored = random_model(vocab, cell="gru", layers=2, units=16, embedding=4)
                for (name, values, entry), variable in zip(web.stored_weights(model, storage),
                                                           stored.named_variables().values()):
                    variable.assign(web.dequantize(values, entry))
                self.open(folder)
                np.testing.assert_allclose(self.page_probabilities(text), python_probabilities(stored, vocab, text),
                                           rtol=0, atol=1e-5)
                # close to the float32 model's, but not equal: the stored weights are rounded
                difference = np.abs(python_probabilities(stored, vocab, text) - python_probabilities(model, vocab, text))
                self.assertGreater(difference.max(), 0)
        self.assertEqual(sizes["float16"], 2 * sizes["int8"])

    def test_the_embedded_model_is_the_model_json_beside_it(self):
        vocab = Vocabulary(sorted(set(UNICODE + HOSTILE)))
        folder = self.export(random_model(vocab, layers=1, units=8), vocab, {**INFO, "name": HOSTILE})
        html = (folder / "index.html").read_text(encoding="utf-8")
        embedded = re.search(r'<script type="application/json" id="charrnn-model">(.*?)</script>', html, re.S)
        manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        self.assertEqual(json.loads(embedded.group(1)), manifest)
        self.assertTrue(embedded.group(1).isascii())
        self.assertNotIn("<", embedded.group(1))
        self.assertEqual(manifest["vocabulary"], vocab.chars)
        entries = manifest["weightsManifest"][0]["weights"]
        self.assertEqual(sum(4 * int(np.prod(e["shape"])) for e in entries), (folder / "weights.bin").stat().st_size)
        self.assertEqual([e["name"] for e in entries], list(random_model(vocab, layers=1, units=8).named_variables()))


    def test_over_http_the_page_works_and_a_page_of_one_s_own_loads_model_json(self):
        vocab = Vocabulary(UNICODE)
        folder = self.export(random_model(vocab, cell="lstm", layers=2, units=8), vocab)
        (folder / "mine.html").write_text('<!DOCTYPE html><meta charset="utf-8"><script src="charrnn.js"></script>')
        handler = functools.partial(QuietHandler, directory=str(folder))
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                self.browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                expected = self.browser.execute_script("return model.probabilities('abc de')")
                self.browser.get(f"http://127.0.0.1:{server.server_address[1]}/mine.html")
                loaded = self.browser.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "CharRNN.load('model.json').then(m => done(m.probabilities('abc de')), e => done(String(e)))")
            finally:
                server.shutdown()
        self.assertIsInstance(loaded, list, loaded)
        np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-7)


class TestWebPage(WebPageTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        quiet_train(tiny(cls.tmp, run="r", max_steps=10))
        cls.ck = os.path.join(cls.tmp, "ck")

    def export_run(self):
        folder = os.path.join(self.tmp, f"run-page{self.pages}")
        type(self).pages += 1
        code, _, err = play("r", "--checkpoint-dir", self.ck, "--export-web", folder)
        self.assertEqual(code, 0, err)
        self.assertIn("ckpt-10", err)  # which checkpoint was read
        return folder

    def test_greedy_text_equals_rnn_play_argmax(self):
        self.open(self.export_run())
        text = self.browser.execute_script("return model.generate({prime: 'the cat', length: 500, argmax: true})")
        _, expected, _ = play("r", "--checkpoint-dir", self.ck, "--prime", "the cat", "-n", "500", "--argmax")
        self.assertEqual(len(text), 500)
        self.assertEqual("the cat" + text, expected)

    def test_a_seed_gives_the_same_text_every_time_and_the_page_streams_it(self):
        browser = self.open(self.export_run())
        generate = "return model.generate({prime: 'a dog', length: 300, temperature: 1.2, topK: 8, topP: 0.95, seed: arguments[0]})"
        first = browser.execute_script(generate, 7)
        self.assertEqual(browser.execute_script(generate, 7), first)
        self.assertNotEqual(browser.execute_script(generate, 8), first)
        streamed = browser.execute_script(
            "const s = []; for (const ch of model.stream({prime: 'a dog', length: 300, temperature: 1.2, topK: 8, "
            "topP: 0.95, seed: 7})) s.push(ch); return s")
        self.assertEqual("".join(streamed), first)
        self.open(self.export_run())  # a new page, the same text: through its form
        self.fill(prime="a dog", length=300, temperature=1.2, **{"top-k": 8, "top-p": 0.95, "seed": 7})
        browser.find_element("id", "generate").click()
        self.wait_until_done()
        self.assertEqual(browser.find_element("id", "output").get_attribute("textContent"), "a dog" + first)
        self.assertIn("seed 7", browser.find_element("id", "status").text)

    def test_the_sampling_flags_given_fill_in_the_form(self):
        folder = os.path.join(self.tmp, "flags-page")
        code, _, err = play("r", "--checkpoint-dir", self.ck, "--export-web", folder, "--prime", "a <b>&",
                            "--temperature", "0.7", "--top-k", "4", "-n", "50", "--seed", "5")
        self.assertEqual(code, 0, err)
        browser = self.open(folder)
        value = lambda name: browser.find_element("id", name).get_attribute("value")
        self.assertEqual([value(n) for n in ("prime", "temperature", "top-k", "length", "seed", "top-p")],
                         ["a <b>&", "0.7", "4", "50", "5", "1"])  # top-p not given: the page's own
        self.assertFalse(browser.find_element("id", "argmax").is_selected())
        browser.find_element("id", "generate").click()
        self.wait_until_done()
        expected = browser.execute_script(
            "return model.generate({prime: 'a <b>&', length: 50, temperature: 0.7, topK: 4, seed: 5})")
        self.assertEqual(browser.find_element("id", "output").get_attribute("textContent"), "a <b>&" + expected)
        self.open(self.export_run())  # none given: the page's defaults
        self.assertEqual([value(n) for n in ("prime", "temperature", "length", "seed")], ["", "0.8", "500", ""])

    def test_stop_ends_a_stream(self):
        browser = self.open(self.export_run())
        self.fill(length=10 ** 6, seed=1)
        browser.find_element("id", "generate").click()
        time.sleep(0.3)
        browser.find_element("id", "stop").click()
        self.wait_until_done()
        made = len(browser.find_element("id", "output").get_attribute("textContent"))
        time.sleep(0.2)
        self.assertEqual(len(browser.find_element("id", "output").get_attribute("textContent")), made)
        self.assertGreater(made, 0)
        self.assertLess(made, 10 ** 6)

    def test_the_page_shows_the_run(self):
        browser = self.open(self.export_run())
        self.assertEqual(browser.find_element("id", "run-name").text, "r")
        self.assertIn("r/best/ckpt-10", browser.find_element("id", "run-checkpoint").text)  # a run exports its best
        self.assertIn("GRU 2\u00d716", browser.find_element("id", "run-model").text)
        self.assertRegex(browser.find_element("id", "run-loss").text, r"^\d+\.\d{4} nats/char")

    def test_a_bad_folder_is_refused_in_one_line_and_nothing_is_written(self):
        full = os.path.join(self.tmp, "full")
        os.makedirs(full, exist_ok=True)
        Path(full, "keep.txt").write_text("mine")
        a_file = os.path.join(self.tmp, "a-file")
        Path(a_file).write_text("x")
        def ours():  # the files under tmp, less the browser's profile, which Chromium writes as it likes
            return {k: v for k, v in files_of(self.tmp).items() if not k.startswith("profile" + os.sep)}

        for target in (full, a_file, os.path.join(a_file, "page"), ""):
            with self.subTest(target=target):
                before = ours()
                code, out, err = play("r", "--checkpoint-dir", self.ck, "--export-web", target)
                self.assertEqual(code, 2)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn("--export-web", err)
                self.assertEqual(ours(), before)  # no temporary folder left either

    def fill(self, **fields):
        for name, value in fields.items():
            self.browser.execute_script("document.getElementById(arguments[0]).value = arguments[1]", name, str(value))

    def wait_until_done(self, seconds=30):
        end = time.monotonic() + seconds
        while not self.browser.find_element("id", "generate").is_enabled():
            self.assertLess(time.monotonic(), end, "the page did not finish generating")
            time.sleep(0.05)


class TestWebSafety(WebPageTest):
    def elements(self):
        return self.browser.execute_script(
            "return Array.from(document.querySelectorAll('*'), e => e.tagName + '#' + e.id)")

    def generate_with_prime(self, prime):
        self.browser.execute_script("document.getElementById('prime').value = arguments[0];"
                                    "document.getElementById('length').value = '200';"
                                    "document.getElementById('seed').value = '3';"
                                    "document.getElementById('generate').click()", prime)
        end = time.monotonic() + 30
        while not self.browser.find_element("id", "generate").is_enabled():
            self.assertLess(time.monotonic(), end)
            time.sleep(0.05)

    def test_a_hostile_vocabulary_run_name_and_prime_are_shown_as_text(self):
        self.browser.get_log("browser")  # drop what came before
        benign_vocab = Vocabulary(UNICODE)
        self.open(self.export(random_model(benign_vocab, layers=1, units=8), benign_vocab))
        self.generate_with_prime("abc")
        benign = self.elements()
        vocab = Vocabulary(sorted(set(UNICODE + HOSTILE)))
        browser = self.open(self.export(random_model(vocab, layers=1, units=8), vocab, {**INFO, "name": HOSTILE}))
        prime = HOSTILE + "<b>bold</b>"
        self.generate_with_prime(prime)
        # no alert (Selenium would raise), no console message, nothing fetched, no element the page did not make
        self.assertEqual(browser.get_log("browser"), [])
        self.assertEqual(browser.execute_script("return performance.getEntriesByType('resource').length"), 0)
        self.assertEqual(self.elements(), benign)
        self.assertEqual(browser.execute_script("return document.querySelectorAll('img, b').length"), 0)
        self.assertEqual(browser.find_element("id", "run-name").get_attribute("textContent"), HOSTILE)
        self.assertIn("</script><img src=x onerror=alert(1)>", browser.execute_script("return document.title"))
        output = browser.find_element("id", "output").get_attribute("textContent")
        self.assertTrue(output.startswith(prime))
        self.assertEqual(len(output), len(prime) + 200)
        shown = browser.find_element("id", "vocabulary").get_attribute("textContent")
        for shown_as in ("<", ">", "/", "&", '"', "'", "U+2028", "U+2029", "U+0000", "\u21b5"):
            self.assertIn(shown_as, shown)


class TestWebWriter(unittest.TestCase):
    """The writer without a browser."""

    def test_a_failed_write_leaves_nothing(self):
        vocab = Vocabulary("ab")
        model = random_model(vocab, layers=1, units=4)
        with tempfile.TemporaryDirectory() as tmp:
            # the third file of four fails, after two are written
            with mock.patch.object(web.shutil, "copy", side_effect=OSError(28, "No space left on device")):
                with self.assertRaisesRegex(UserError, r"--export-web .*No space left on device"):
                    web.write_page(model, vocab, INFO, os.path.join(tmp, "page"))
            self.assertEqual(os.listdir(tmp), [])
            folder = web.write_page(model, vocab, INFO, os.path.join(tmp, "page"))
            self.assertEqual(sorted(os.listdir(folder)), ["charrnn.js", "index.html", "model.json", "weights.bin"])
            self.assertEqual(os.listdir(tmp), ["page"])

    def test_a_folder_filled_before_the_rename_is_left_as_it_is(self):
        vocab = Vocabulary("ab")
        model = random_model(vocab, layers=1, units=4)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "page").mkdir()
            Path(tmp, "page", "mine.txt").write_text("keep")
            with self.assertRaisesRegex(UserError, r"--export-web .*page: cannot write .*nothing was written"):
                web.write_page(model, vocab, INFO, os.path.join(tmp, "page"))
            self.assertEqual(sorted(os.listdir(tmp)), ["page"])
            self.assertEqual(Path(tmp, "page", "mine.txt").read_text(), "keep")
