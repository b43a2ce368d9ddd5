"""Export a trained model as a static web page that generates text in the browser.

    python3 rnn_play.py RUN --export-web DIR [--web-weights float16]

DIR/index.html is the whole page: open it from the disk or put DIR on any
static host. It needs no server and fetches nothing: the model runs in
plain JavaScript (webpage/charrnn.js, inlined), and the manifest and the weights
are embedded in the page as JSON and base64 inside non-executed
<script type="application/json"> elements, parsed with JSON.parse and atob
(a page opened from file:// may not fetch() its sibling files in Chromium).
The same manifest and weights are also written as DIR/model.json and
DIR/weights.bin, with DIR/charrnn.js, for a page of one's own:
`await CharRNN.load("model.json")`. The manifest's "sampling" holds the sampling
flags given to rnn_play.py (charrnn.js's option names), the form's starting values.

The manifest follows TensorFlow.js's `weightsManifest` layout: one group, one
binary file, each weight's name, shape and dtype in the order of the bytes; a
stored float16 or uint8 weight carries `quantization` ({"dtype": "float16"} or
{"dtype": "uint8", "min", "scale"}, value = min + scale * q, per tensor). The
page computes in float32 whatever the storage.

Safety: the run name, the vocabulary and everything else taken from the run is
untrusted. It reaches the page only as JSON with every non-ASCII character and
`<`, `>`, `&` escaped, inside a non-executed element, and the page's script
shows it with textContent; a Content-Security-Policy allows only the page's own
inline script (by its hash) and nothing fetched.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from charrnn.errors import UserError

ASSETS = Path(__file__).with_name("webpage")
STORAGE = ("float32", "float16", "int8")
FORMAT = "charrnn-web/1"


def stored_weights(model, storage="float32"):
    """[(name, stored array, manifest entry)] of the model's weights in the storage
    type, in Keras's layout; `dequantize` turns a stored array back into float32."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
    out = []
    for name, variable in model.named_variables().items():
        w = np.asarray(variable.numpy(), np.float32)
        entry = {"name": name, "shape": list(w.shape), "dtype": "float32"}
        if storage == "float16":
            w, entry["quantization"] = w.astype(np.float16), {"dtype": "float16"}
        elif storage == "int8":
            low, high = float(w.min()), float(w.max())
            scale = (high - low) / 255 or 1.0
            w = np.round((w - low) / scale).astype(np.uint8)
            entry["quantization"] = {"dtype": "uint8", "min": low, "scale": scale}
        out.append((name, w, entry))
    return out


def dequantize(stored, entry):
    """The float32 values the page computes with, from a stored array and its entry."""
    q = entry.get("quantization", {})
    if q.get("dtype") == "uint8":
        return (np.float32(q["min"]) + np.float32(q["scale"]) * stored.astype(np.float32)).astype(np.float32)
    return stored.astype(np.float32)


def manifest(model, vocab, info, weights, sampling=None):
    """The page's model.json: the configuration, the vocabulary, what is shown about the run,
    and the sampling options the page starts with (charrnn.js's option names; the others keep the page's)."""
    c = model.config
    return {
        "format": FORMAT,
        "model": {"cell": c.cell, "layers": c.layers, "units": c.units, "embedding": c.embedding,
                  "vocab_size": c.vocab_size, "parameters": c.parameters()},
        "vocabulary": vocab.chars,  # code order; code 0 is the unknown symbol
        "unknown": vocab.unk_index,
        "run": info,
        "sampling": dict(sampling or {}),
        "weightsManifest": [{"paths": ["weights.bin"], "weights": [entry for _, _, entry in weights]}],
    }


def _safe_json(obj):
    """JSON that cannot end or escape the <script type="application/json"> it sits in:
    ASCII only (U+2028, U+2029 and NUL as \\u escapes) and no <, > or &."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(model_json, weights_bytes):
    """index.html: the template with the script inlined and the model embedded."""
    script = (ASSETS / "charrnn.js").read_text(encoding="utf-8") + (ASSETS / "page.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    parts = {"@CSP_SCRIPT@": f"'sha256-{digest}'", "@SCRIPT@": script, "@MODEL_JSON@": _safe_json(model_json),
             "@WEIGHTS_BASE64@": base64.b64encode(weights_bytes).decode("ascii")}
    # One pass over the template: a marker inside an inserted text (a run named @SCRIPT@) stays text.
    return re.sub("|".join(parts), lambda m: parts[m.group(0)], html)


def run_info(run_dir, prefix, step, best_validation_loss):
    """What the page shows about the run (untrusted text: the page shows it as text); the
    best validation loss is the run's so far, as the checkpoint records it."""
    loss = None if best_validation_loss is None else float(best_validation_loss)
    return {"name": Path(run_dir).name, "checkpoint": str(Path(prefix).relative_to(Path(run_dir).parent)),
            "step": int(step), "best_validation_loss": loss}


def write_page(model, vocab, info, directory, storage="float32", sampling=None):
    """Write the page folder at directory, which must not exist or be an empty folder
    (rnn_play.py checks; a folder that is not empty fails the rename, unchanged);
    sampling: the options the page starts with (manifest).

    Everything is written into a temporary folder beside it and renamed into
    place, so a failure leaves nothing half-written. Returns the folder's Path.
    """
    target = Path(directory)
    flag = "--export-web"
    weights = stored_weights(model, storage)
    data = b"".join(np.ascontiguousarray(w).astype(w.dtype.newbyteorder("<")).tobytes() for _, w, _ in weights)
    model_json = manifest(model, vocab, info, weights, sampling)
    html = page(model_json, data)  # before anything is written: a value JSON cannot hold is refused here
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as e:
        raise UserError(f"{flag} {directory}: cannot write there ({e.strerror}); choose another folder") from None
    try:
        (staging / "weights.bin").write_bytes(data)
        (staging / "model.json").write_text(json.dumps(model_json, ensure_ascii=False, indent=1), encoding="utf-8")
        shutil.copy(ASSETS / "charrnn.js", staging / "charrnn.js")
        (staging / "index.html").write_text(html, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the page from a web server
        if target.exists():
            target.rmdir()  # only if empty
        staging.rename(target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{flag} {directory}: cannot write ({e.strerror}); free some space or choose "
                        f"another folder (nothing was written)") from None
    return target


def export_web(model, vocab, run_dir, prefix, directory, storage="float32", sampling=None):
    """rnn_play.py --export-web: the page of the checkpoint at prefix (catalog.load_for_generation),
    starting with the sampling options given ({charrnn.js option: value})."""
    from charrnn import checkpoints  # TensorFlow: not needed by write_page's callers
    step, best = checkpoints.progress_of(prefix)
    info = run_info(run_dir, prefix, step, best if best < checkpoints.NOT_VALIDATED else None)
    return write_page(model, vocab, info, directory, storage, sampling)


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def open_chromium(profile_dir):
    """A headless Chromium driven by Selenium, with a fresh profile in profile_dir,
    for the tests and benchmark.py web. Raises RuntimeError saying why when there is
    none (Debian: apt-get install chromium chromium-driver; pip install selenium)."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
    except ImportError as e:
        raise RuntimeError(f"selenium is not installed ({e}); pip install -r requirements.txt") from None
    driver = shutil.which("chromedriver")
    if driver is None:
        raise RuntimeError("no chromedriver on the PATH; on Debian: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile_dir}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages, for the tests
    try:  # the driver is given, so Selenium looks nothing up on the network
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    except WebDriverException as e:
        raise RuntimeError(f"Chromium did not start: {(e.msg or str(e)).strip().splitlines()[0]}") from None
