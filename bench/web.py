"""The web section: the page of rnn_play.py --export-web in headless Chromium, its speed,
sizes, first character and loss per weight storage."""

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import VOCAB, run_child, text_path, timing

WEB_SHAPES = {"2x512, embedding 64": dict(layers=2, units=512, embedding=64), "3x512": dict(layers=3, units=512)}
WEB_LOSS_CHARS = 30_000
WEB_TRAIN_STEPS = 300  # a model that writes words, trained in a minute or two


def child_web(args):
    """The exported page in headless Chromium: speed, sizes, first character, loss per storage."""
    from charrnn import web
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.text import Vocabulary
    browser = web.open_chromium(os.path.join(args.tmp, "profile"))
    browser.set_script_timeout(args.seconds * 3 + 60)
    try:
        vocab = Vocabulary([chr(c) for c in range(32, 32 + VOCAB - 2)] + ["\n"])
        out = {"speed": {}, "sizes": {}, "ready_ms": {}, "first_ms": {}}
        info = {"name": "bench", "checkpoint": "bench/ckpt-0", "step": 0, "best_validation_loss": None}
        for name, shape in WEB_SHAPES.items():
            model = CharRNN(ModelConfig(vocab_size=len(vocab), **shape), "fused")
            for storage in web.STORAGE:
                folder = web.write_page(model, vocab, info, os.path.join(args.tmp, f"{name}-{storage}"), storage)
                out["sizes"][f"{name} {storage}"] = [(folder / f).stat().st_size for f in ("weights.bin", "index.html")]
            ready, first = web_first_character(browser, os.path.join(args.tmp, f"{name}-float32"))
            out["ready_ms"][name], out["first_ms"][name] = ready, first
            out["engine"] = browser.execute_script("return model.engine")
            out["speed"][name] = [browser.execute_script(WEB_WINDOW, args.seconds) for _ in range(args.windows)]
        out["loss"] = web_losses(args, browser)
        out["browser"] = browser.capabilities.get("browserVersion")
        return out
    finally:
        browser.quit()


WEB_WINDOW = """const seconds = arguments[0], start = performance.now(); let made = 0;
for (const ch of model.stream({prime: "\\n", length: 0, seed: 1})) {
  if (++made % 64 === 0 && performance.now() - start > seconds * 1000) break;
}
return made / ((performance.now() - start) / 1000);"""


def web_first_character(browser, folder):
    """(ms from opening the page to its model being ready, ms from Generate to the first character)."""
    browser.get(Path(folder, "index.html").as_uri())
    browser.find_element("id", "generate").click()
    while browser.execute_script("return window.firstCharacterMs") is None:
        time.sleep(0.01)
    first = browser.execute_script("document.getElementById('stop').click(); return window.firstCharacterMs")
    return browser.execute_script("return window.pageReadyMs"), first


def web_losses(args, browser):
    """A GRU 2x128 trained briefly on --data; its loss on held-out characters, in the page for each
    storage and in Python, one sequence from a zero state each."""
    import contextlib
    import io
    import numpy as np
    import tensorflow as tf
    from charrnn import training, web
    from charrnn.config import TrainConfig
    from charrnn.catalog import load_for_generation
    from charrnn.text import read_corpus
    steps = WEB_TRAIN_STEPS
    cfg = TrainConfig(data=[args.data], validation="tail", layers=2, units=128, seqlen=64, batch_size=32, lr=3e-3,
                      dropout=0.0, max_steps=steps, val_every=steps, sample_every=steps + 1, checkpoint_every=steps,
                      log_every=steps, checkpoint_dir=os.path.join(args.tmp, "ck"),
                      log_dir=os.path.join(args.tmp, "log"), run="web", precision="fp32")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        training.train(cfg)
    model, vocab, run_dir, prefix = load_for_generation("web", cfg.checkpoint_dir)
    ids = read_corpus(cfg.data, vocab=vocab, validation="tail").valid[:WEB_LOSS_CHARS + 1].astype(np.int32)
    text, states, total = vocab.decode(ids), None, 0.0
    chunk_loss = tf.function(lambda x, y, states: (lambda logits, states: (tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)), states))(*model(x, states)))
    for start in range(0, len(ids) - 1, 100):  # one sequence, the state carried from chunk to chunk
        chunk = ids[start:start + 101][None]
        loss, states = chunk_loss(tf.constant(chunk[:, :-1]), tf.constant(chunk[:, 1:]),
                                  states or model.initial_states(1))
        total += float(loss)
    losses = {"python": total / (len(ids) - 1), "chars": len(ids) - 1, "steps": steps}
    for storage in web.STORAGE:
        folder = web.export_web(model, vocab, run_dir, prefix, os.path.join(args.tmp, f"loss-{storage}"), storage)
        browser.get(Path(folder, "index.html").as_uri())
        losses[storage] = browser.execute_script("return model.loss(arguments[0])", text)
    return losses


def report_web(args, matmul):
    with tempfile.TemporaryDirectory() as tmp:
        r = run_child("web", tmp=tmp, data=text_path(args), **timing(args))
    print(f"web: headless Chromium {r['browser']}, the model in {r['engine']}, batch 1, random weights; load "
          f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for name, rates in r["speed"].items():
        print(f"web: GRU {name}: {statistics.median(rates):,.0f} chars/s (windows "
              f"{' '.join(f'{x:,.0f}' for x in rates)}); page open to model ready {r['ready_ms'][name]:,.0f} ms, "
              f"Generate to first character {r['first_ms'][name]:,.0f} ms")
    for name, (weights, page) in r["sizes"].items():
        print(f"web: GRU {name}: weights.bin {weights:,} bytes, index.html {page:,} bytes")
    loss = r["loss"]
    print(f"web: GRU 2x128 trained {loss['steps']} steps; loss predicting {loss['chars']:,} held-out characters, "
          f"one sequence: Python {loss['python']:.4f}, page float32 {loss['float32']:.4f}, float16 "
          f"{loss['float16']:.4f} ({loss['float16'] - loss['float32']:+.4f}), int8 {loss['int8']:.4f} "
          f"({loss['int8'] - loss['float32']:+.4f}) nats/char")
