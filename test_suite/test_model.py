"""The model (model.py) and its fused CPU kernels (fused.py): shapes, weights, agreement with Keras."""

import unittest
from unittest import mock

import numpy as np

from test_suite.helpers import (V, copy_weights, forward_and_gradients, mean_loss, random_ids, random_states, tf,
                                tiny_model_config)
from charrnn.config import ModelConfig
from charrnn.model import CharRNN, Dropout


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
        self.assertEqual(ModelConfig(vocab_size=98).flops_per_char(), expected)
        self.assertEqual(ModelConfig(vocab_size=10, cell="rnn", layers=1, units=4, embedding=3).flops_per_char(), 2 * 4 * 7 + 2 * 4 * 10)


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

    def test_auto_runs_the_stock_layers_with_a_gpu_and_the_fused_kernels_without(self):
        real = tf.config.list_physical_devices
        gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
        for gpus, expected in (([], "fused"), ([gpu], "keras")):
            def visible(kind=None, gpus=gpus):
                return gpus if kind == "GPU" else real(kind)
            with self.subTest(implementation=expected), mock.patch.object(tf.config, "list_physical_devices", visible):
                self.assertEqual(CharRNN(tiny_model_config(), "auto").implementation, expected)

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
                results = {name: forward_and_gradients(model, ids, y, states)
                           for name, model in (("fused", fused), ("keras", stock))}
                np.testing.assert_allclose(results["fused"][0], results["keras"][0], rtol=1e-6)
                for name in list(stock.named_variables()) + ["state_0", "state_1"]:  # the gradients
                    g = results["keras"][1][name]
                    self.assertGreater(np.abs(g).max(), 0, name)
                    np.testing.assert_allclose(results["fused"][1][name], g, atol=1e-6, err_msg=name)



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


class WeightDropTest(unittest.TestCase):
    """Weight-drop: the recurrent kernels read through a dropout mask drawn once per batch."""

    def test_one_mask_per_call_scaled_and_at_its_rate(self):
        model = CharRNN(tiny_model_config(units=32, weight_drop=0.5), "fused")
        kernels = model.recurrent_kernels(training=True)
        for rnn, kernel in zip(model.rnns, kernels):
            weights, kernel = rnn.recurrent_kernel.numpy(), kernel.numpy()
            kept = kernel != 0
            np.testing.assert_allclose(kernel[kept], 2 * weights[kept], rtol=1e-6)
            self.assertAlmostEqual(kept.mean(), 0.5, delta=0.05)  # of 32 x 96 weights
        again = model.recurrent_kernels(training=True)
        self.assertFalse(np.array_equal(kernels[0].numpy() != 0, again[0].numpy() != 0))  # the next batch's mask
        self.assertEqual(model.recurrent_kernels(training=False), [None, None])
        self.assertEqual(CharRNN(tiny_model_config(), "fused").recurrent_kernels(training=True), [None, None])
        self.assertEqual(set(model.rng_variables()), {"weight_drop_0/seed_state", "weight_drop_1/seed_state"})

    def test_both_implementations_train_on_the_masked_kernels_for_every_row_and_step(self):
        ids, y = random_ids(64, 6), random_ids(64, 6, seed=5)  # 64 rows: the fused path's two row groups
        logits_of = {}
        for implementation in ("fused", "keras"):
            with self.subTest(implementation=implementation):
                model = CharRNN(tiny_model_config(weight_drop=0.5), implementation)
                states = random_states(model, 64)
                rng = {name: v.numpy() for name, v in model.rng_variables().items()}
                kernels = model.recurrent_kernels(training=True)
                for name, v in model.rng_variables().items():
                    v.assign(rng[name])  # the call below draws the same masks again
                variables = model.named_variables()
                with tf.GradientTape() as tape:
                    logits, _ = model(ids, states, training=True)
                    loss = mean_loss(y, logits)
                grads = dict(zip(variables, tape.gradient(loss, list(variables.values()))))
                # A model without weight-drop whose recurrent kernels are the masked ones computes the same.
                twin = CharRNN(tiny_model_config(), implementation)
                copy_weights(model, twin)
                for rnn, kernel in zip(twin.rnns, kernels):
                    rnn.recurrent_kernel.assign(kernel)
                twin_variables = twin.named_variables()
                with tf.GradientTape() as tape:
                    expected, _ = twin(ids, states, training=True)
                    twin_loss = mean_loss(y, expected)
                twin_grads = dict(zip(twin_variables, tape.gradient(twin_loss, list(twin_variables.values()))))
                np.testing.assert_allclose(logits, expected, atol=1e-6)
                for layer, kernel in enumerate(kernels):  # the gradient reaches the kept weights, scaled
                    name = f"rnn_{layer}/recurrent_kernel"
                    scale = (kernel.numpy() != 0) * 2.0
                    np.testing.assert_allclose(tf.convert_to_tensor(grads[name]), scale * tf.convert_to_tensor(twin_grads[name]), atol=1e-6)
                logits_of[implementation] = logits
        np.testing.assert_allclose(logits_of["fused"], logits_of["keras"], atol=1e-5)  # the same weights dropped
