"""Reverse-mode automatic differentiation on the IR and the training graph built from it.

    reverse.py   `backward(graph, loss, wrt)`: appends gradient nodes, op by op, through each op's rule
    training.py  forward (train mode) + loss + backward + optimizer update -> one training graph

The gradient rules are declared with the ops (`defop(..., grad=rule)` in compiler/ops/<family>.py).
"""

from .reverse import AutodiffError, Emitter, backward  # noqa: F401
