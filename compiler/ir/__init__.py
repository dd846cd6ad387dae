"""The graph IR: types, values, nodes, graphs, their textual form, the verifier and the reference interpreter."""

from .constants import ConstantMemo  # noqa: F401
from .graph import Graph, Node, Value  # noqa: F401
from .interpreter import interpret  # noqa: F401
from .parser import parse_graph  # noqa: F401
from .printer import print_graph  # noqa: F401
from .types import TensorType  # noqa: F401
from .verifier import verify  # noqa: F401
