"""Installing the project adds one import package, `tensorforge`, with the repository's folders mapped under it
(pyproject.toml); the everyday API is at its top."""

import importlib.metadata
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_pyproject_maps_every_package_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    expected = {"tensorforge"}
    for top in ("compiler", "frontends", "runtime"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            if rel.parts[:2] == ("compiler", "_tensorforge"):
                continue
            expected.add("tensorforge." + ".".join(rel.parts))
    assert set(cfg["packages"]) == expected
    assert dirs == {"tensorforge": "compiler/_tensorforge", "tensorforge.compiler": "compiler",
                    "tensorforge.frontends": "frontends", "tensorforge.runtime": "runtime"}


def test_one_top_level_import_package():
    owned = {name for name, dists in importlib.metadata.packages_distributions().items() if "tensorforge" in dists}
    assert owned == {"tensorforge"}
    # away from the checkout (whose folders are importable from its root), only `tensorforge` imports
    code = ("import importlib.util, tensorforge\n"
            "print([m for m in ('compiler', 'frontends', 'runtime') if importlib.util.find_spec(m)])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
