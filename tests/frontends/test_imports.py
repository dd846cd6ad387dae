"""Importing the frontends loads nothing of the compiler beyond the IR and the op table. (Which modules they import,
lazily too, and that they import each other without a cycle: tests/test_layering.py.)"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_importing_the_frontends_loads_no_pass_or_backend():
    # tensorforge/compiler/__init__.py is lazy (PEP 562): what is loaded is what the frontends themselves import
    code = ("import sys\n"
            "import tensorforge.frontends.onnx, tensorforge.frontends.onnx.docs, tensorforge.frontends.torch\n"
            "import tensorforge.frontends.nn, tensorforge.frontends.trainable\n"
            "print(' '.join(m for m in sys.modules if m.startswith('tensorforge.compiler.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    loaded = [m.removeprefix("tensorforge.") for m in out.split()]
    assert any(m.startswith("compiler.ops") for m in loaded), loaded
    assert all(m.startswith(("compiler.ir", "compiler.ops")) for m in loaded), loaded
