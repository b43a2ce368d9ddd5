"""Sampling (sampling.py): rules on hand-built logits, and the compiled generator."""

import unittest

import numpy as np

from charrnn.config import SamplingConfig
from charrnn.errors import UserError
from charrnn.model import CharRNN
from charrnn.sampling import Generator, filter_logits, pick
from test_suite.helpers import V, copy_weights, tf, tiny_model_config
from txt_utils import Vocabulary


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


class GeneratorTest(unittest.TestCase):
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

    def test_a_stream_s_seed_overrides_the_config_s(self):
        """Training samples pass seed + step, so each sample of a run draws other numbers, reproducibly."""
        model = CharRNN(tiny_model_config(), "fused")
        vocab = Vocabulary([chr(ord("a") + i) for i in range(V - 1)])
        generator = Generator(model, vocab, SamplingConfig(seed=5), chunk=16, jit=False)

        def text(seed=None):
            return next(generator.stream(length=40, seed=seed))[0].tolist()

        self.assertEqual(text(), text(5))
        self.assertEqual(text(6), text(6))
        self.assertNotEqual(text(5), text(6))
