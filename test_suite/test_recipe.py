"""--preset quality's recipe (charrnn/recipe.py): the model, dropout and validation
chosen from the text's size, the budget and the machine's speed."""

import contextlib
import io
import os
import tempfile
import unittest
from unittest import mock

import rnn_train
from charrnn import recipe
from charrnn.config import ModelConfig

MB = 1_000_000


def probe_for(chars_s):
    """The probe's speed (GRU 2x256) on a machine that trains GRU 2x512 at chars_s."""
    return chars_s * recipe.char_cost(512) / recipe.char_cost(recipe.PROBE_UNITS)


def choose(megabytes, minutes, chars_s):
    """The recipe for a text of that size (its last 10% held out), budget and 2x512 speed."""
    return recipe.choose(int(0.9 * megabytes * MB), int(0.1 * megabytes * MB), 60 * minutes,
                         {recipe.PROBE_UNITS: probe_for(chars_s)})


def machine(chars_s, slower=None):
    """measure_speed on a machine that trains GRU 2x512 at chars_s by the costs, the widths
    in slower ({units: factor}) that many times slower than the costs say."""
    return lambda cfg, vocab, units=recipe.PROBE_UNITS, **_: \
        recipe.chars_per_second(units, probe_for(chars_s), vocab) / (slower or {}).get(units, 1.0)


class RecipeTest(unittest.TestCase):
    def test_more_time_or_a_faster_machine_never_gets_less_model_or_less_dropout(self):
        for megabytes in (0.3, 1.1, 5, 50):
            for vary in ("minutes", "speed"):
                choices = [choose(megabytes, m, 17_000) if vary == "minutes" else choose(megabytes, 10, m)
                           for m in ((2, 5, 10, 30, 60, 120) if vary == "minutes" else (1_000, 4_000, 17_000, 60_000))]
                units = [c.flags["units"] for c in choices]
                dropout = [c.flags["dropout"] for c in choices]
                self.assertEqual(units, sorted(units), (megabytes, vary))
                self.assertEqual(dropout, sorted(dropout), (megabytes, vary))

    def test_the_widest_model_that_still_reads_enough_characters_a_weight(self):
        c = choose(50, 10, 17_000)
        chars = lambda units: (60 * 10 * (1 - recipe.VALIDATION_SHARE) - recipe.STARTUP_SECONDS) * \
            recipe.chars_per_second(units, probe_for(17_000))
        per_weight = lambda units: chars(units) / ModelConfig(
            vocab_size=100, layers=recipe.LAYERS, units=units, embedding=recipe.EMBEDDING).parameters()
        units = c.flags["units"]
        self.assertGreater(units, recipe.WIDTHS[0])
        self.assertGreaterEqual(per_weight(units), recipe.MIN_CHARS_PER_WEIGHT)
        wider = [u for u in recipe.WIDTHS if u > units]
        self.assertTrue(all(per_weight(u) < recipe.MIN_CHARS_PER_WEIGHT for u in wider), (units, wider))
        self.assertEqual(choose(50, 2, 1_000).flags["units"], recipe.WIDTHS[0])  # nothing fits: the smallest

    def test_a_small_text_caps_the_weights_per_training_character(self):
        for megabytes in (0.3, 1.1):
            units = choose(megabytes, 120, 60_000).flags["units"]
            params = ModelConfig(vocab_size=100, layers=recipe.LAYERS, units=units,
                                 embedding=recipe.EMBEDDING).parameters()
            self.assertLessEqual(params, recipe.MAX_PARAMS_PER_CHAR * 0.9 * megabytes * MB)
        self.assertGreater(choose(50, 120, 60_000).flags["units"], choose(0.3, 120, 60_000).flags["units"])

    def test_dropout_follows_the_passes_times_the_weights_per_character(self):
        self.assertEqual(recipe.dropout_for(0.9, 5.0), 0.0)   # a first pass cannot overfit
        self.assertEqual(recipe.dropout_for(3.0, 2.0), 0.0)   # up to FREE_EXPOSURE, none
        self.assertEqual(recipe.dropout_for(6.0, 2.0), 0.1)   # 0.1 a doubling beyond it
        self.assertEqual(recipe.dropout_for(24.0, 2.0), 0.3)
        self.assertEqual(recipe.dropout_for(15.5, 1.43), 0.15)  # 0.18 rounds down
        self.assertEqual(recipe.dropout_for(16.0, 0.66), 0.05)  # a small model on the same passes: less
        self.assertEqual(recipe.dropout_for(8.0, 0.66), 0.0)
        self.assertEqual(recipe.dropout_for(1000.0, 1.0), recipe.MAX_DROPOUT)
        self.assertEqual(choose(50, 10, 17_000).flags["dropout"], 0.0)
        self.assertGreater(choose(1.1, 30, 17_000).flags["dropout"], choose(1.1, 10, 17_000).flags["dropout"])

    def test_a_wider_model_keeps_some_dropout_past_a_first_pass(self):
        floor = (recipe.MIN_DROPOUT, recipe.WEIGHT_DECAY)  # the floor's dropout keeps the light decay
        self.assertEqual(recipe.regularisation_for(5.7, 0.32, 384), floor)  # an exposure of 1.8
        self.assertEqual(recipe.regularisation_for(5.7, 0.32, recipe.WIDTHS[0]), (0.0, recipe.WEIGHT_DECAY))
        self.assertEqual(recipe.regularisation_for(0.9, 0.32, 768), (0.0, recipe.WEIGHT_DECAY))  # a first pass
        self.assertEqual(recipe.regularisation_for(15.5, 1.43, 384), (0.15, recipe.OVERFIT_WEIGHT_DECAY))
        self.assertGreater(recipe.dropout_for(15.5, 1.43), recipe.MIN_DROPOUT)  # ... the exposure's, above it
        python = choose(5, 30, 9_500).flags  # the 5 MB Python text on one core of a Zen 4
        self.assertEqual((python["units"], python["dropout"], python["weight_decay"]), (384,) + floor)

    def test_weight_decay_is_stronger_where_the_exposure_needs_dropout(self):
        read_once, read_often = choose(50, 10, 17_000).flags, choose(1.1, 10, 17_000).flags
        self.assertEqual((read_once["dropout"], read_once["weight_decay"]), (0.0, recipe.WEIGHT_DECAY))
        self.assertGreater(read_often["dropout"], 0.0)
        self.assertEqual(read_often["weight_decay"], recipe.OVERFIT_WEIGHT_DECAY)
        self.assertGreater(recipe.OVERFIT_WEIGHT_DECAY, recipe.WEIGHT_DECAY)

    def test_the_learning_rate_falls_as_the_width_grows(self):
        rates = {units: recipe.lr_for(units, recipe.LR_STEPS) for units in recipe.WIDTHS}
        self.assertEqual(rates, {256: 0.005, 384: 0.00333, 512: 0.0025, 768: 0.00167})
        chosen = choose(50, 2, 20_000).flags  # 1,301 steps: below LR_STEPS, the width's rate alone
        self.assertEqual(chosen["lr"], round(recipe.LR_UNITS / chosen["units"], 5))

    def test_the_learning_rate_rises_with_the_steps_up_to_its_cap(self):
        rates = [recipe.lr_for(512, steps) for steps in (2_300, recipe.LR_STEPS, 3_500, 7_000, 50_000)]
        self.assertEqual(rates[:2], [0.0025, 0.0025])
        self.assertLess(rates[1], rates[2])
        self.assertLess(rates[2], rates[3])
        self.assertEqual(rates[3:], [recipe.MAX_LR, recipe.MAX_LR])
        self.assertEqual(recipe.lr_for(256, 50_000), recipe.MAX_LR)

    def test_a_text_read_many_times_takes_a_higher_cap(self):
        self.assertEqual(recipe.lr_for(512, 50_000, passes=recipe.REREAD_PASSES), recipe.REREAD_MAX_LR)
        self.assertEqual(recipe.lr_for(512, 50_000, passes=recipe.REREAD_PASSES - 1), recipe.MAX_LR)
        self.assertEqual(recipe.lr_for(512, 2_000, passes=30), 0.0025)  # the cap only: not the rate below it
        small, large = choose(1.1, 30, 30_000).flags, choose(50, 30, 30_000).flags
        self.assertEqual((small["units"], small["lr"]), (512, recipe.REREAD_MAX_LR))  # 51 passes of 12,305 steps
        self.assertEqual((large["units"], large["lr"]), (512, recipe.MAX_LR))  # the same steps: 1.1 passes

    def test_validation_takes_about_its_share_of_the_budget(self):
        cases = [(megabytes, minutes, chars_s) for megabytes in (0.3, 1.1, 16, 50) for minutes in (2, 10, 30)
                 for chars_s in (700, 4_000, 17_000, 27_000)]
        for megabytes, minutes, chars_s in cases:
            c = choose(megabytes, minutes, chars_s)
            flags, seconds = c.flags, 60 * minutes
            planned = float(c.reason.split("(")[1].split(" steps")[0].replace(",", ""))
            eval_chars_s = recipe.EVAL_SPEEDUP * recipe.chars_per_second(flags["units"], probe_for(chars_s))
            validations = planned / flags["val_every"]
            spent = (validations + 1) * min(flags["val_chars"], 0.1 * megabytes * MB) / eval_chars_s
            self.assertGreaterEqual(validations, recipe.MIN_VALIDATIONS, (megabytes, minutes, chars_s))
            self.assertLessEqual(validations, 1.2 * recipe.VALIDATIONS + 1, (megabytes, minutes, chars_s))
            if flags["val_chars"] > recipe.FEWEST_VAL_CHARS:  # else the machine is too slow for the share
                self.assertLessEqual(spent, 1.2 * recipe.VALIDATION_SHARE * seconds, (megabytes, minutes, chars_s))
            if flags["val_every"] >= 50:
                self.assertEqual(flags["val_every"] % 10, 0)  # validated on a step whose training is logged
            self.assertLessEqual(flags["val_chars"], recipe.MAX_VAL_CHARS)
        self.assertEqual(choose(50, 2, 700).flags["val_chars"], recipe.FEWEST_VAL_CHARS)
        self.assertEqual(choose(50, 30, 20_000).flags["units"], 512)
        self.assertEqual(choose(50, 30, 20_000).flags["val_chars"] // 1000,
                         int(recipe.VALIDATION_SHARE * 1800 * 3 * 20_000 / 11) // 1000)  # what the share pays for

    def test_the_reason_says_what_was_chosen_and_why(self):
        c = choose(4.4, 10, 17_000)
        how = "a measured" if c.flags["units"] == recipe.PROBE_UNITS else "an estimated"  # only 2x256 was probed
        self.assertRegex(c.reason, r"^4\.0 MB, about [\d.]+ passes in 10 min \([\d,]+ steps at " + how + " "
                                   r"[\d,]+ chars/s\): GRU 2x\d+ \([\d.]+ weights a training character\), learning "
                                   r"rate [\d.]+, dropout [\d.]+, weight decay [\d.]+; validation every \d+ steps on "
                                   r"[\d,]+ chars, about \d+% of the time$")
        self.assertIn(f"GRU 2x{c.flags['units']} (", c.reason)
        self.assertIn(f"character), learning rate {c.flags['lr']:g}, dropout {c.flags['dropout']:g}, "
                      f"weight decay {c.flags['weight_decay']:g};", c.reason)

    def test_a_slower_probe_means_proportionally_fewer_chars_per_second(self):
        self.assertAlmostEqual(recipe.chars_per_second(512, 4000) / recipe.chars_per_second(512, 2000), 2.0)
        self.assertAlmostEqual(recipe.chars_per_second(recipe.PROBE_UNITS, 4000), 4000)  # the probe's own shape
        ratio = recipe.chars_per_second(256, 4000) / recipe.chars_per_second(512, 4000)
        self.assertAlmostEqual(ratio, recipe.char_cost(512) / recipe.char_cost(256))
        self.assertTrue(2 < ratio < 4)  # a quarter of the FLOPs, but the element-wise work only halves

    def test_the_text_size_comes_from_the_files_sizes_and_a_sample_of_their_symbols(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in (("a.txt", "ab" * 300), ("b.txt", "\u00e9" * 200)):  # é: 2 bytes in UTF-8
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    f.write(text)
            self.assertEqual(recipe.text_size([os.path.join(tmp, "*.txt")]), (900, 100, 4))  # a, b, é, unknown
            self.assertEqual(recipe.text_size([os.path.join(tmp, "*.txt")], sample_bytes=10)[2], 3)

    def test_the_vocabulary_prices_the_readout_of_each_width(self):
        # The probe trains at the run's vocabulary, so its speed already holds the readout's
        # cost at the probe's width; a wider model's readout grows with the units.
        for vocab in (66, 5000):
            ratio = recipe.chars_per_second(512, 4000, vocab) / recipe.chars_per_second(256, 4000, vocab)
            self.assertAlmostEqual(ratio, recipe.char_cost(256, vocab=vocab) / recipe.char_cost(512, vocab=vocab))
        self.assertGreater(recipe.char_cost(256, vocab=5000), 2 * recipe.char_cost(256, vocab=66))


class MeasuredChoiceTest(unittest.TestCase):
    def test_a_width_chosen_is_measured_and_the_choice_made_again_from_its_speed(self):
        probes = []

        def measure(units):  # 2x512 trains 1.7x slower than the costs say, as on a 2-core Zen 3
            probes.append(units)
            return machine(13_000, {512: 1.7})(None, 66, units)

        c = recipe.choose_measured(MB, MB // 10, 66, lambda: 1800, measure)
        self.assertEqual(probes, [256, 512, 384])   # 512 too slow once measured: 384, measured too
        self.assertEqual(c.flags["units"], 384)
        self.assertIn("steps at a measured", c.reason)
        probes.clear()
        c = recipe.choose_measured(MB, MB // 10, 66, lambda: 1800, measure, wider=False)  # --units typed
        self.assertEqual(probes, [256])
        self.assertIn("steps at an estimated", c.reason)
        probes.clear()
        recipe.choose_measured(MB, MB // 10, 66, lambda: 180, measure)  # 3 minutes: 2x256, nothing wider
        self.assertEqual(probes, [256])
        probes.clear()
        c = recipe.choose_measured(MB, MB // 10, 66, lambda: 60, measure)  # 1 minute: no probe, 2x256
        self.assertEqual((probes, c.flags["units"]), ([], 256))
        self.assertIn("steps at an assumed 20,000 chars/s", c.reason)


class PresetTest(unittest.TestCase):
    """rnn_train.quality_recipe: where --preset quality meets the recipe."""

    def adapted(self, argv, resume=None):
        cfg, _, _ = rnn_train.parse(argv)
        with mock.patch.object(recipe, "measure_speed", machine(17_000)), \
                contextlib.redirect_stderr(io.StringIO()) as err:
            return rnn_train.quality_recipe(cfg, argv, resume), err.getvalue()

    def test_the_recipe_sets_what_the_user_did_not_type(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "input.txt")
            with open(data, "w") as f:
                f.write("to be or not to be\n" * 60_000)  # 1.1 MB
            cfg, printed = self.adapted(["--preset", "quality", "--data", data, "--max-time", "30m"])
            train_chars, valid_chars, vocab = recipe.text_size([data])
            expected = recipe.choose_measured(train_chars, valid_chars, vocab, lambda: 1800,
                                              lambda units: machine(17_000)(None, vocab, units))
            self.assertEqual({k: getattr(cfg, k) for k in expected.flags}, expected.flags)
            self.assertEqual(printed, f"recipe: {expected.reason}\n")
            cfg, printed = self.adapted(["--preset", "quality", "--data", data, "--units", "128", "--dropout", "0"])
            self.assertEqual((cfg.units, cfg.dropout), (128, 0.0))  # typed flags win
            self.assertIn("(given, so kept in place of the recipe's: --units 128, --dropout 0.0)", printed)
            for argv, resume in ((["--preset", "quality", "--data", data], ""), (["--preset", "quick"], None)):
                cfg, printed = self.adapted(argv, resume)  # a resumed run keeps its saved choice
                self.assertEqual((cfg, printed), (rnn_train.parse(argv)[0], ""))


class ProbeTest(unittest.TestCase):
    def test_the_probe_times_the_real_training_step(self):
        cfg, _, _ = rnn_train.parse(["--preset", "quality", "--precision", "fp32"])
        slow = recipe.measure_speed(cfg, 66, seconds=0.0)   # the warm-up, then a step a window
        self.assertGreater(slow, 100)                      # chars/s: at least a slow core's
        self.assertLess(slow, 10_000_000)

    def test_the_probe_takes_its_fastest_window_after_the_warm_up(self):
        clock = [0.0]
        durations = iter([30.0] * recipe.WARMUP_STEPS + [0.4] * 5 + [0.1] * 1000)  # tracing, slow, then fast

        class Trainer:
            def __init__(self, *args):
                pass

            def train_step(self, x, y):
                clock[0] += next(durations)

        cfg, _, _ = rnn_train.parse(["--preset", "quality", "--precision", "fp32"])
        with mock.patch("charrnn.trainer.Trainer", Trainer), mock.patch.object(recipe.time, "perf_counter",
                                                                             lambda: clock[0]):
            speed = recipe.measure_speed(cfg, 66, seconds=2.0, windows=4)
        self.assertAlmostEqual(speed, recipe.BATCH * recipe.SEQLEN / 0.1, delta=1)  # neither the warm-up nor the slow steps


if __name__ == "__main__":
    unittest.main()
