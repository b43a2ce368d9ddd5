"""The quickstart notebook, executed whole with papermill as CI runs it, and the
GPU check (`benchmark.py gpu`) on a machine without a GPU.

The notebook test trains for 30 s on walkthrough/sonnets.txt, everything it
writes in a temporary folder: about 3 minutes on 2 cores.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
SONNETS = ROOT / "walkthrough" / "sonnets.txt"


def outputs_by_tag(notebook):
    """{tag: (the cell's printed text, the MIME types it displayed)} of an executed notebook."""
    found = {}
    for cell in notebook.cells:
        for tag in cell.metadata.get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                           if o.output_type == "stream" and o.name == "stdout")  # not TensorFlow's C++ logs
            shown = {mime for o in cell.get("outputs", []) for mime in o.get("data", {})}
            found[tag] = (text, shown)
    return found


class NotebookTest(unittest.TestCase):
    def test_the_committed_notebook_is_clean_and_takes_its_parameters_first(self):
        import nbformat
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        self.assertEqual(code[0].metadata.get("tags"), ["parameters"])
        self.assertIn('MAX_TIME = "10m"', code[0].source)
        self.assertEqual([cell.execution_count for cell in code if cell.outputs or cell.execution_count], [])

    @unittest.skipUnless(importlib.util.find_spec("papermill"), "papermill is not installed: "
                         "pip install -r requirements.txt installs it")
    def test_the_quickstart_notebook_runs_from_install_to_export(self):
        import nbformat
        before = sorted(os.listdir(ROOT))
        with tempfile.TemporaryDirectory() as tmp:
            # The kernel is this Python, whatever kernels the machine has registered (JUPYTER_PATH comes first).
            kernel = Path(tmp, "kernels", "python3")
            kernel.mkdir(parents=True)
            (kernel / "kernel.json").write_text(json.dumps({
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3", "language": "python"}))
            executed = os.path.join(tmp, "executed.ipynb")
            done = subprocess.run(
                [sys.executable, "-m", "papermill", str(NOTEBOOK), executed, "--cwd", str(NOTEBOOK.parent),
                 "-k", "python3", "-p", "MAX_TIME", "30s", "-p", "DATA", str(SONNETS), "-p", "WORKDIR", tmp],
                capture_output=True, text=True, timeout=900, env={**os.environ, "JUPYTER_PATH": tmp})
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            out = outputs_by_tag(nbformat.read(executed, as_version=4))
            self.assertIn("nothing to install", out["install"][0])
            self.assertRegex(out["train"][0], r"new run .* from 1 file")
            # It ends at its deadline, or earlier where validation stopped improving (--patience):
            # a fast machine reads the sonnets' 6,151 characters some 35 times in 30 s.
            self.assertRegex(out["train"][0], r"--max-time 30s reached|ending early with the best checkpoint")
            self.assertRegex(out["train"][0], r"\ndone: step \d+")
            self.assertIn("image/png", out["curves"][1])  # the learning curves, drawn inline
            sample = out["generate"][0].split(", seed 1\n", 1)[1]  # after rnn_play.py's "generating from ..., seed 1" line
            self.assertGreaterEqual(len(sample.strip()), 400)  # -n 500, less a few newlines and spaces
            self.assertRegex(out["eval"][0], r"loss \d+\.\d{4} nats/char +\d+\.\d{4} bits/char +accuracy")
            exported = next(Path(tmp, "exported").iterdir())
            self.assertTrue((exported / "saved_model.pb").is_file())
            # The SavedModel's generate, same seed and sampling controls, writes what rnn_play.py wrote.
            written = out["export"][0].split("generate(...)\n", 1)[1].rstrip("\n")
            self.assertGreater(len(written), 100)
            self.assertTrue(sample.startswith(written), (sample[:300], written))
        self.assertEqual(sorted(os.listdir(ROOT)), before)  # nothing written into the checkout


class GpuCheckTest(unittest.TestCase):
    def test_benchmark_gpu_without_a_gpu_says_so_in_one_line_and_exits_0(self):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
        done = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "gpu"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 1, done.stdout)
        self.assertRegex(lines[0], r"^gpu: no NVIDIA GPU visible to TensorFlow \d+\.\d+\.\d+; nothing measured")
