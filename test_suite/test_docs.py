"""The docs against the code: DEVELOPERS.md's layout table names every module with
its real imports, every local link leads to a file and heading that exist, and the
README's commands use only flags their scripts know. Fast: parsing, no TensorFlow."""

import ast
import re
import subprocess
import sys
import unittest
from pathlib import Path

import benchmark
import rnn_play
import rnn_train

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = r"(?<![\w-])--?[a-z](?:[a-z0-9-]*[a-z0-9])?"  # not the halves of a flag wrapped in a help text


def flags_of(help_text):
    return set(re.findall(FLAG, help_text))


SCRIPTS = {name: flags_of(parser.format_help()) for name, parser in (
    ("rnn_train.py", rnn_train.make_parser()), ("rnn_play.py", rnn_play.make_parser()),
    ("benchmark.py", benchmark.make_parser()))}


PACKAGES = ("charrnn", "bench")  # bench: benchmark.py's sections, above charrnn


def module_name(dotted):
    """A module's name in the table: charrnn.text -> text; bench.text and benchmark stay as they are."""
    package, _, module = dotted.partition(".")
    return module.split(".")[0] if package == "charrnn" else dotted


def project_imports(path):
    """The charrnn and bench modules a file imports, by their names in the table."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
            names |= {module_name(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            names.add(module_name(node.module))
        elif isinstance(node, ast.Import):
            names |= {module_name(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES and "." in a.name}
    return names


def layout_rows():
    """DEVELOPERS.md's layout table: [(path, name, imports column)], top to bottom."""
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w/]+\.py)` \| .* \| ([\w., -]+) \|$", text, re.M)
    return [(path, module_name(path[:-3].replace("/", ".")), {n.strip() for n in names.split(",")} - {"-"})
            for path, names in rows]


def prose(page):
    """A page's lines outside fenced code blocks."""
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def anchors(page):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose(page) if line.startswith("#")}


class DevelopersLayoutTest(unittest.TestCase):
    def test_every_module_is_in_the_table_with_the_imports_it_has(self):
        rows = layout_rows()
        named = {path for path, _, _ in rows}
        modules = {f"{package}/{p.name}" for package in PACKAGES for p in (ROOT / package).glob("*.py")
                   if p.name != "__init__.py"}
        self.assertEqual(modules - named, set(), "modules missing from DEVELOPERS.md's table")
        for path, _, imports in rows:
            with self.subTest(module=path):
                self.assertTrue((ROOT / path).is_file(), "a row for a module that does not exist")
                self.assertEqual(imports, project_imports(ROOT / path))

    def test_each_module_imports_only_modules_below_it(self):
        order = [name for path, name, _ in layout_rows() if path.split("/")[0] in PACKAGES]
        for path, name, imports in layout_rows():
            below = order[order.index(name) + 1:] if name in order else order
            with self.subTest(module=path):
                self.assertEqual(imports - set(below), set())


class LinksTest(unittest.TestCase):
    def test_every_local_link_leads_to_a_file_and_heading_that_exist(self):
        for page in PAGES:
            for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose(page))):
                if re.match(r"[a-z]+:", target):
                    continue  # a web address
                with self.subTest(page=page.name, link=target):
                    path, _, anchor = target.partition("#")
                    linked = (page.parent / path).resolve() if path else page
                    self.assertTrue(linked.exists(), f"{linked} does not exist")
                    if anchor:
                        self.assertIn(anchor, anchors(linked))


class ReadmeCommandsTest(unittest.TestCase):
    def test_every_flag_of_a_readme_command_is_one_its_script_knows(self):
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        commands = re.findall(r"\b(rnn_train\.py|rnn_play\.py|benchmark\.py)([^\n`#|]*)", readme)
        self.assertGreater(len(commands), 20)
        for script, rest in commands:
            known = SCRIPTS[script]
            words = rest.split()
            for word in words:
                if word.startswith("-") and word != "-":
                    with self.subTest(script=script, flag=word):
                        self.assertIn(word.split("=")[0], known)
            if script == "benchmark.py":
                sections = [w for w in words[:next((i for i, w in enumerate(words) if w.startswith("-")),
                                                   len(words))]]
                self.assertLessEqual(set(sections), set(benchmark.SECTIONS), rest)

    def test_every_flag_the_readme_names_exists(self):
        readme = "\n".join(prose(ROOT / "README.md"))
        known = set().union(*SCRIPTS.values())
        fetch = subprocess.run([sys.executable, "txt_utils.py", "fetch", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
        known |= flags_of(fetch) | {"--logdir"}  # txt_utils.py fetch's; tensorboard's
        for flag in {f for f in re.findall(FLAG, readme) if f.startswith("--")}:
            with self.subTest(flag=flag):
                self.assertIn(flag, known)


if __name__ == "__main__":
    unittest.main()
