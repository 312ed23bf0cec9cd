"""
The two builds: pure Python (the default install) and the hot modules compiled by mypyc
(``TWISTED_LB_MYPYC=1`` at install, ``hatch_build.py``). ``.ci/run`` runs the whole suite on
each, with ``TWISTED_LB_BUILD`` naming the build it installed, so that a compiled run that
quietly loads the sources fails here.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twisted_lb
from tests._harness import TWISTED_LB
from twisted_lb.cli import compiled_modules

HATCH_BUILD = Path(__file__).parent.parent / "hatch_build.py"


def compiled_by_the_build() -> list[str]:
    """The modules ``hatch_build.COMPILED`` names, as module names (read, not imported)."""
    tree = ast.parse(HATCH_BUILD.read_text())
    [value] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED"
    ]
    paths = ast.literal_eval(value)
    return sorted(path.strip("/").removesuffix(".py").replace("/", ".") for path in paths)


class BuildTests(SynchronousTestCase):
    def test_all_or_nothing(self) -> None:
        """
        Either every module that the build compiles is loaded compiled, or none is: a mix is a
        stale extension module beside the sources. ``TWISTED_LB_BUILD`` (``pure`` or
        ``compiled``), where set, says which.
        """
        expected = compiled_by_the_build()
        self.assertEqual(len(expected), 5)
        loaded = compiled_modules()
        build = os.environ.get("TWISTED_LB_BUILD")
        if build == "compiled":
            self.assertEqual(loaded, expected)
        elif build == "pure":
            self.assertEqual(loaded, [])
        else:
            self.assertIn(loaded, ([], expected))

    def test_version_names_the_build(self) -> None:
        """``twisted-lb --version`` says whether the hot modules are compiled, and which."""
        result = subprocess.run(
            [TWISTED_LB, "--version"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        loaded = compiled_modules()
        if loaded:
            names = ", ".join(name.removeprefix("twisted_lb.") for name in loaded)
            build = f"compiled with mypyc: {names}"
        else:
            build = "pure Python"
        self.assertEqual(result.stdout, f"twisted-lb {twisted_lb.__version__} ({build})\n")

    def test_compiled_modules_sees_extensions(self) -> None:
        """An extension module of ``twisted_lb`` is reported; a source module is not."""
        import importlib.machinery

        package = Path(twisted_lb.__file__).parent
        if not os.access(package, os.W_OK):
            self.skipTest(f"{package} is not writable")
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        fake = package / f"_build_probe{suffix}"
        self.assertFalse(fake.exists())
        fake.write_bytes(b"")  # found by name; never imported
        self.addCleanup(fake.unlink)
        self.assertIn("twisted_lb._build_probe", compiled_modules())
        self.assertNotIn("twisted_lb.config", compiled_modules())
