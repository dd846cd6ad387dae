"""`tensorforge opt FILE.ir -p PASS{option=value},...`: run named passes over IR text and print the IR text out, as
mlir-opt and xdsl-opt do, so that a pass can be tried, and golden-tested, from files.

A pass spec is a pass name (every name a pipeline uses, `tensorforge opt --list`), optionally followed by options in
braces that set the fields of the pass's frozen dataclass: `fold_constants{max_elements=1024}`,
`mixed_precision{dtype=bfloat16}`, `fuse{max_group_size=8}`. Values are Python literals (numbers, True/False,
tuples, quoted strings); a bare word is a string.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys

import numpy as np

from tensorforge.compiler.ir import parse_graph, print_graph
from tensorforge.compiler.ir.printer import INLINE_LIMIT
from tensorforge.compiler.passes.manager import Pass, PassManager
from tensorforge.compiler.passes.pipeline import registered_passes
from tensorforge.runtime.artifact import atomic_write
from tensorforge.runtime.errors import InputError

_SPEC = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pass_spec(spec: str) -> list[Pass]:
    """'simplify,fuse{max_group_size=8}' -> the pass objects, options applied."""
    passes, known, pos = [], registered_passes(), 0
    spec = spec.strip()
    while pos < len(spec):
        m = _SPEC.match(spec, pos)
        if not m or m.end() == pos:
            raise InputError(f"-p {spec}: cannot read a pass spec at {spec[pos:]!r}; write NAME or "
                             f"NAME{{option=value,...}}, comma-separated")
        name, options = m.group(1), m.group(2)
        pos = m.end()
        if name not in known:
            raise InputError(f"-p: no pass named {name!r}; passes: {', '.join(sorted(known))}")
        p = known[name]
        if options is not None and options.strip():
            p = _with_options(name, p, options)
        passes.append(p)
    if not passes:
        raise InputError("-p: no passes given")
    return passes


def _with_options(name: str, p: Pass, options: str) -> Pass:
    if not dataclasses.is_dataclass(p):
        raise InputError(f"-p {name}{{{options}}}: pass {name!r} takes no options")
    fields = {f.name for f in dataclasses.fields(p) if f.init and f.name != "name"}
    values = {}
    for item in filter(None, (s.strip() for s in _split_top_level(options))):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise InputError(f"-p {name}{{{options}}}: {item!r} is no option of {name!r}; its options: "
                             f"{', '.join(sorted(fields)) or 'none'}")
        values[key] = _value(text.strip())
    try:
        return dataclasses.replace(p, **values)
    except (TypeError, ValueError) as e:
        raise InputError(f"-p {name}{{{options}}}: {e}") from None


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses and quotes: 'a=(1, 2), b="x,y"' -> ['a=(1, 2)', ' b="x,y"']."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def describe_passes() -> list[str]:
    """One line per pass: its name and options with their values in the pipelines."""
    lines = []
    for name, p in sorted(registered_passes().items()):
        opts = [f"{f.name}={getattr(p, f.name)!r}" for f in dataclasses.fields(p) if f.init and f.name != "name"] \
            if dataclasses.is_dataclass(p) else []
        lines.append(name + (f"{{{', '.join(opts)}}}" if opts else ""))
    return lines


def run_passes(g, passes: list[Pass], verify_each: bool = True, dump=print):
    return PassManager(passes, verify_each=verify_each, dump=dump).run(g)


def cmd_opt(args) -> int:
    """IR text in, IR text out: the named passes over one graph (compiler/opt.py)."""
    if args.list:
        print("\n".join(describe_passes()))
        return 0
    if not args.file or not args.passes:
        raise InputError("opt: give an IR file (or - for standard input) and -p PASS,...; --list names the passes")
    passes = parse_pass_spec(",".join(args.passes))
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.file) as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"opt: cannot read {args.file}: {e.strerror or e}") from None
    params = {}
    if args.params:
        try:
            with np.load(args.params, allow_pickle=False) as z:
                params = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise InputError(f"opt: cannot read --params {args.params}: {e}") from None
    g = parse_graph(text, params)
    dumps = []
    g = run_passes(g, passes, verify_each=not args.no_verify, dump=dumps.append)
    out = print_graph(g)
    if args.output:
        atomic_write(args.output, lambda f: f.write(out.encode()))
    else:
        sys.stdout.write(out)
    if args.params_out:
        big = {p.name: p.data for p in g.params if p.data is not None and p.type.numel > INLINE_LIMIT}
        atomic_write(args.params_out, lambda f: np.savez(f, **big))
    return 0
