"""A one-line description of the machine a benchmark ran on (CPU model, cores, ISA, library versions)."""

from __future__ import annotations

import os
import platform


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    flags, family, model = set(), None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("cpu family") and family is None:
                    family = line.split(":", 1)[1].strip()
                if line.startswith("model") and not line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    isa += "".join(f", {name}" for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")) if flag in flags)
    if family is not None:
        cpu += f" (family {family} model {model})"
    versions = []
    for mod in ("numpy", "onnxruntime", "torch"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    try:
        from importlib.metadata import version

        versions.insert(0, f"apache-tvm {version('apache-tvm')}")
    except Exception:
        pass
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores available, {isa}, Python {platform.python_version()}, "
            + ", ".join(versions))


def write_lines(path: str, lines: list[str]) -> None:
    """Write a markdown report (one line per entry), creating its directory; says where."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)


def package_link(checkout: str, links: str) -> str:
    """A directory under `links` from which `import tensorforge` imports the checkout `checkout` as pyproject.toml
    maps it (tensorforge is compiler/_tensorforge; tensorforge.compiler, .frontends, .runtime the folders): put it
    first on PYTHONPATH to run another commit side by side with this one."""
    link = os.path.join(links, os.path.basename(os.path.normpath(checkout)) + "-" + str(abs(hash(checkout))))
    package = os.path.join(link, "tensorforge")
    if not os.path.exists(package):
        os.makedirs(package)
        root = os.path.abspath(checkout)
        os.symlink(os.path.join(root, "compiler", "_tensorforge", "__init__.py"), os.path.join(package, "__init__.py"))
        for sub in ("compiler", "frontends", "runtime"):
            os.symlink(os.path.join(root, sub), os.path.join(package, sub))
    return link


def run_in_checkout(code: str, checkout: str, links: str) -> dict:
    """Run the Python `code` in a fresh process importing `tensorforge` from `checkout` (`package_link`, under the
    directory `links`; TensorForge's disk cache off) and return the JSON it prints after "RESULT "."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, TENSORFORGE_CACHE_DIR="off", PYTHONPATH=package_link(checkout, links))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=links)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"the run in {checkout} failed:\n{out.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])
