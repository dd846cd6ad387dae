"""Reverse-mode automatic differentiation on the IR and the training graph built from it.

    reverse.py   `backward(graph, loss, wrt)`: appends gradient nodes, op by op, through each op's rule
    rules.py     the gradient rules, attached to the ops with `defgrad(op)(rule)`
    training.py  forward (train mode) + loss + backward + optimizer update -> one training graph
"""

from . import rules  # noqa: F401  (attaches the gradient rules to the ops)
from .reverse import AutodiffError, Emitter, backward  # noqa: F401
from .rules import defgrad, nondifferentiable  # noqa: F401
