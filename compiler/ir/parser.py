"""Parser for the textual IR written by `printer.py`. Errors raise `ParseError` with line and column."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

import numpy as np

from tensorforge.runtime.errors import IRError, ParseError

from .graph import Graph, Value
from .types import SHORT_DTYPE, TensorType, numpy_dtype

if TYPE_CHECKING:
    from tensorforge.compiler.ops import OpDef

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<value>%(?:[A-Za-z0-9_.]+|"(?:[^"\\]|\\.)*"))
  | (?P<type>(?:TYPES)\[[0-9, ]*\])
  | (?P<number>[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|inf|nan))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<group>@[A-Za-z0-9_.]+)
  | (?P<punct>[(){}\[\],=:])
""".replace("TYPES", "|".join(sorted(SHORT_DTYPE, key=len, reverse=True))), re.VERBOSE)  # longest first


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


class _Tokens:
    def __init__(self, text: str):
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"{self._where(text, pos)}: unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group(), pos))
            pos = m.end()
        self.text = text
        self.i = 0

    @staticmethod
    def _where(text: str, pos: int) -> str:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def error(self, msg: str, back: int = 0) -> ParseError:
        """An error at the current token, or at the token `back` places before it."""
        i = self.i - back
        pos = self.toks[i][2] if i < len(self.toks) else len(self.text)
        return ParseError(f"{self._where(self.text, pos)}: {msg}")

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i][:2] if self.i < len(self.toks) else ("eof", "")

    def next(self, kind: str | None = None, text: str | None = None) -> str:
        k, t = self.peek()
        if (kind and k != kind) or (text and t != text) or k == "eof":
            want = repr(text) if text else kind
            raise self.error(f"expected {want}, found {t!r}" if k != "eof" else f"expected {want}, found end of text")
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "ident"):
            self.i += 1
            return True
        return False


def _parse_type(tok: str) -> TensorType:
    short, dims = tok[:-1].split("[")
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return TensorType(shape, SHORT_DTYPE[short])


def _name(tok: str) -> str:
    return _unquote(tok[1:]) if tok[1] == '"' else tok[1:]


def _number(tok: str):
    if re.fullmatch(r"[-+]?\d+", tok):
        return int(tok)
    return float(tok)


def _parse_attr_value(ts: _Tokens):
    kind, tok = ts.peek()
    if kind == "number":
        ts.next()
        return _number(tok)
    if kind == "string":
        ts.next()
        return _unquote(tok)
    if kind == "ident" and tok in ("true", "false"):
        ts.next()
        return tok == "true"
    if ts.accept("("):
        items = []
        while not ts.accept(")"):
            items.append(_parse_attr_value(ts))
            if not ts.accept(","):
                ts.next("punct", ")")
                break
        return tuple(items)
    raise ts.error(f"expected an attribute value, found {tok!r}")


def parse_graph(text: str, params: dict[str, np.ndarray] | None = None, ops: Mapping[str, OpDef] | None = None
                ) -> Graph:
    """Parse IR text. `params` supplies data for parameters whose data is not inline (by value name); `ops` is
    the op table that names resolve in (as MLIR's parser takes a context), by default compiler.ops.OPS."""
    if ops is None:
        from tensorforge.compiler.ops import OPS as ops  # the ops package imports the IR: the one benign upward import

    params = params or {}
    ts = _Tokens(text)
    ts.next("ident", "graph")
    g = Graph(ts.next("ident"))
    env: dict[str, Value] = {}

    def define(tok: str, v: Value) -> None:
        env[_name(tok)] = v

    def lookup(tok: str) -> Value:
        name = _name(tok)
        if name not in env:
            raise ts.error(f"value %{name} is used before it is defined", back=1)
        return env[name]

    ts.next("punct", "(")
    while not ts.accept(")"):
        tok = ts.next("value")
        ts.next("punct", ":")
        define(tok, g.add_input(_name(tok), _parse_type(ts.next("type"))))
        if not ts.accept(","):
            ts.next("punct", ")")
            break
    ts.next("punct", "{")
    while True:
        kind, tok = ts.peek()
        if kind == "ident" and tok == "return":
            ts.next()
            outs, names = [], []
            while True:
                outs.append(lookup(ts.next("value")))
                names.append(_unquote(ts.next("string")) if ts.accept("as") else outs[-1].name)
                if not ts.accept(","):
                    break
            g.outputs = outs
            g.output_names = names
            ts.next("punct", "}")
            break
        out_toks = [ts.next("value")]
        while ts.accept(","):
            out_toks.append(ts.next("value"))
        ts.next("punct", "=")
        opname = ts.next("ident")
        if opname == "param":
            ty = _parse_type(ts.next("type"))
            name = _name(out_toks[0])
            data = params.get(name)
            if ts.accept("="):
                ts.next("punct", "[")
                items = []
                while not ts.accept("]"):
                    items.append(_number(ts.next("number")))
                    ts.accept(",")
                if len(items) != ty.numel:
                    raise ts.error(f"param %{name} of type {ty} has {len(items)} values")
                data = np.array(items, dtype=numpy_dtype(ty.dtype)).reshape(ty.shape)
            if data is not None and (data.shape != ty.shape or str(data.dtype) != ty.dtype):
                raise ts.error(f"data given for param %{name} is {data.dtype}{list(data.shape)}, expected {ty}")
            define(out_toks[0], g.add_param(name, data, ty))
            continue
        if opname not in ops:
            raise ts.error(f"unknown op {opname!r}", back=1)
        op = ops[opname]
        ts.next("punct", "(")
        args = []
        while not ts.accept(")"):
            args.append(lookup(ts.next("value")))
            if not ts.accept(","):
                ts.next("punct", ")")
                break
        attrs = {}
        if ts.accept("{"):
            while not ts.accept("}"):
                key = ts.next("ident")
                ts.next("punct", "=")
                attrs[key] = _parse_attr_value(ts)
                if not ts.accept(","):
                    ts.next("punct", "}")
                    break
        ts.next("punct", ":")
        declared = [_parse_type(ts.next("type"))]
        while ts.accept(","):
            declared.append(_parse_type(ts.next("type")))
        group = ts.next("group")[1:] if ts.peek()[0] == "group" else None
        try:
            outs = g.add_node(op, args, attrs, out_names=[_name(t) for t in out_toks])
            outs[0].producer.group = group
        except IRError as e:
            raise ts.error(str(e)) from None
        if [o.type for o in outs] != declared or len(outs) != len(out_toks):
            raise ts.error(f"{opname} gives {', '.join(str(o.type) for o in outs)}, "
                           f"but the text declares {', '.join(map(str, declared))}")
        for t, v in zip(out_toks, outs):
            if v.name != _name(t):
                raise ts.error(f"value {t} is defined twice")
            define(t, v)
    if ts.peek()[0] != "eof":
        raise ts.error("text after the end of the graph")
    return g
